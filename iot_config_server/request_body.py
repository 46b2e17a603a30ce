"""Reading a JSON request body: media type, a hard size cap, and the core's strict decoder.

The cap is enforced before anything is buffered: from ``Content-Length`` when present, and while
reading when the body is chunked, so an oversized upload costs at most ``cap + 1`` bytes of memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iot_config_core import DocumentLimits, InvalidDocumentError, Patch, decode_document
from iot_config_core.patching import JSON_PATCH, MERGE_PATCH, decode_patch

from .api_models import PutConfigRequest, api_converter
from .http_errors import ApiError, ApiErrorCode

__all__ = [
    "ENVELOPE_ALLOWANCE",
    "PATCH_MEDIA_TYPES",
    "parse_patch_request",
    "parse_put_request",
    "patch_media_type",
    "read_body",
    "require_json",
]

#: Bytes allowed on top of the document limit for the request envelope (``{"content": ...}``)
#: and for formatting a client may add that the stored, re-encoded form does not keep.
ENVELOPE_ALLOWANCE = 64 * 1024
_CHUNK = 64 * 1024
# Reasons of `InvalidDocumentError` that are about the request's JSON text, not the content rules.
_SYNTAX_REASONS = frozenset({"empty", "syntax", "invalid_utf8", "byte_order_mark", "not_an_object"})


def require_json(environ: dict[str, Any]) -> None:
    """Refuse a body that is not declared as JSON (415): the UI and CLI always declare it."""
    declared = environ.get("CONTENT_TYPE") or ""
    media_type, _, params = declared.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise ApiError(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"the request body is {declared[:100]!r}, not application/json"
            if declared
            else "the request has no Content-Type header (expected application/json)",
            content_type=declared[:100],
            expected="application/json",
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise ApiError(
                ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f"the request body must be UTF-8, not {value.strip()[:40]!r}",
                content_type=declared[:100],
                expected="application/json",
            )


def _too_large(size: int | None, cap: int) -> ApiError:
    details: dict[str, Any] = {"limit": cap}
    if size is not None:
        details["size"] = size
    shown = f"{size} bytes" if size is not None else "more bytes"
    return ApiError(
        ApiErrorCode.PAYLOAD_TOO_LARGE,
        f"the request body of {shown} is over the limit of {cap} bytes",
        **details,
    )


def read_body(environ: dict[str, Any], cap: int) -> bytes:
    """The request body, at most ``cap`` bytes, else `ApiError` ``PAYLOAD_TOO_LARGE``.

    Handles the three ways a WSGI server hands a body over: with ``CONTENT_LENGTH``; de-chunked
    until EOF (``wsgi.input_terminated``); or still in chunked framing (servers such as wsgiref
    that pass ``Transfer-Encoding: chunked`` through).
    """
    stream = environ.get("wsgi.input")
    length_text = (environ.get("CONTENT_LENGTH") or "").strip()
    chunked = "chunked" in (environ.get("HTTP_TRANSFER_ENCODING") or "").lower()
    if length_text and not chunked:
        length = int(length_text) if length_text.isdigit() else -1
        if length < 0:
            raise ApiError(
                ApiErrorCode.INVALID_HEADER,
                f"the Content-Length header {length_text[:40]!r} is not a byte count",
                header="Content-Length",
            )
        if length > cap:
            raise _too_large(length, cap)
        if stream is None or length == 0:
            return b""
        return _read_exactly(stream.read, length)
    if stream is None:
        return b""
    if chunked and not environ.get("wsgi.input_terminated"):
        return _read_chunked(stream.read, cap)
    if chunked or environ.get("wsgi.input_terminated"):
        return _read_to_eof(stream.read, cap)
    return b""  # no length and not chunked: RFC 9112 says there is no body


def _read_exactly(read: Callable[[int], bytes], length: int) -> bytes:
    parts: list[bytes] = []
    remaining = length
    while remaining > 0:
        part = read(min(remaining, _CHUNK))
        if not part:
            break  # client went away; the truncated JSON fails to parse with a precise message
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _read_to_eof(read: Callable[[int], bytes], cap: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        part = read(_CHUNK)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > cap:
            raise _too_large(None, cap)
        parts.append(part)


def _bad_chunking() -> ApiError:
    return ApiError(
        ApiErrorCode.INVALID_BODY,
        "the request body's chunked transfer encoding is malformed",
        reason="chunked_framing",
    )


def _read_chunked(read: Callable[[int], bytes], cap: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        line = b""
        while not line.endswith(b"\r\n"):
            char = read(1)
            if not char or len(line) > 1024:
                raise _bad_chunking()
            line += char
        size_text = line.split(b";", 1)[0].strip()
        try:
            chunk_size = int(size_text, 16)
        except ValueError:
            raise _bad_chunking() from None
        if chunk_size == 0:
            return b"".join(parts)  # trailers, if any, are left unread: nothing needs them
        size += chunk_size
        if size > cap:
            raise _too_large(None, cap)
        chunk = _read_exactly(read, chunk_size)
        if len(chunk) != chunk_size or read(2) != b"\r\n":
            raise _bad_chunking()
        parts.append(chunk)


def parse_put_request(data: bytes, limits: DocumentLimits) -> PutConfigRequest:
    """Decode a PUT body with the core's strict JSON rules and check its envelope.

    JSON-text problems are ``INVALID_BODY``; content-rule violations found while decoding
    (duplicate keys, NaN, nesting) keep the core's ``INVALID_DOCUMENT``.
    """
    if not data:
        raise ApiError(
            ApiErrorCode.INVALID_BODY,
            'the request body is empty (expected {"content": {...}})',
            reason="empty",
        )
    # The envelope adds one level of nesting and some bytes around the content.
    envelope_limits = DocumentLimits(
        max_bytes=limits.max_bytes + ENVELOPE_ALLOWANCE, max_depth=limits.max_depth + 1
    )
    try:
        body = decode_document(data, envelope_limits)
    except InvalidDocumentError as exc:
        reason = exc.details.get("reason")
        if reason == "not_an_object":
            raise ApiError(
                ApiErrorCode.INVALID_BODY,
                exc.message.replace("document must be", "the request body must be"),
                reason="not_an_object",
            ) from None
        if reason in _SYNTAX_REASONS:
            raise ApiError(
                ApiErrorCode.INVALID_BODY,
                f"the request body is not valid JSON ({exc.message})",
                **exc.details,
            ) from None
        raise
    if "content" not in body:
        raise ApiError(
            ApiErrorCode.INVALID_BODY,
            'the request body has no "content" object',
            reason="missing_content",
        )
    content = body["content"]
    if not isinstance(content, dict):
        raise ApiError(
            ApiErrorCode.INVALID_BODY,
            f'"content" must be a JSON object, not {_json_kind(content)}',
            reason="content_not_object",
        )
    allow_overwrite = body.get("allow_overwrite", True)
    if not isinstance(allow_overwrite, bool):
        raise ApiError(
            ApiErrorCode.INVALID_BODY,
            f'"allow_overwrite" must be true or false, not {_json_kind(allow_overwrite)}',
            reason="allow_overwrite_not_boolean",
        )
    request: PutConfigRequest = api_converter.structure(body, PutConfigRequest)
    return request


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


#: The media types PATCH accepts, in the order a 415 names them.
PATCH_MEDIA_TYPES = (MERGE_PATCH, JSON_PATCH)


def patch_media_type(environ: dict[str, Any]) -> str:
    """The declared patch format, else 415 naming the accepted ones."""
    declared = environ.get("CONTENT_TYPE") or ""
    media_type = declared.partition(";")[0].strip().lower()
    if media_type not in PATCH_MEDIA_TYPES:
        accepted = " or ".join(PATCH_MEDIA_TYPES)
        raise ApiError(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"a patch must be sent as {accepted}, not {declared[:100]!r}"
            if declared
            else f"the request has no Content-Type header (expected {accepted})",
            content_type=declared[:100],
            accepted=list(PATCH_MEDIA_TYPES),
        )
    return media_type


def parse_patch_request(data: bytes, media_type: str, limits: DocumentLimits) -> Patch:
    """Decode a PATCH body with the core's strict JSON rules into the patch it declares.

    JSON-text problems are ``INVALID_BODY``; content rules keep the core's ``INVALID_DOCUMENT``.
    """
    if not data:
        raise ApiError(ApiErrorCode.INVALID_BODY, "the request body is empty", reason="empty")
    try:
        return decode_patch(data, limits, media_type)
    except InvalidDocumentError as exc:
        if exc.details.get("reason") in _SYNTAX_REASONS:
            raise ApiError(
                ApiErrorCode.INVALID_BODY,
                f"the request body is not valid JSON ({exc.message})",
                **exc.details,
            ) from None
        raise
