"""Strict JSON config documents: what may be stored, how it is written, and its ETag.

Devices parse these documents with small JSON libraries and little RAM, so the store accepts
only what every parser reads the same way: a UTF-8 JSON object, no duplicate keys, no
NaN/Infinity, bounded nesting and size. Stored bytes are pretty-printed (humans edit the files on
the share) and the ETag is a hash of those exact bytes, so a hand edit is a new version.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn

import attrs

from .errors import DocumentTooLargeError, InvalidDocumentError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DocumentLimits",
    "compute_etag",
    "decode_document",
    "encode_document",
]

# The old service accepted any size and real configs of a few hundred KiB exist.
DEFAULT_MAX_BYTES = 1024 * 1024
# Far deeper than any config needs, far below the recursion limits of device-side parsers.
DEFAULT_MAX_DEPTH = 32

_BOM = b"\xef\xbb\xbf"


@attrs.frozen
class DocumentLimits:
    """Bounds on accepted documents; operators of small devices lower ``max_bytes``."""

    max_bytes: int = attrs.field(default=DEFAULT_MAX_BYTES, validator=attrs.validators.gt(0))
    max_depth: int = attrs.field(default=DEFAULT_MAX_DEPTH, validator=attrs.validators.gt(0))


def compute_etag(data: bytes) -> str:
    """The strong ETag of stored bytes: their MD5 in hex.

    MD5 is a change detector here, not a security boundary; it is chosen because it is what S3
    servers report as the ETag of a single-part object, so object stores give us our ETag in a
    listing without reading the object.
    """
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _invalid(reason: str, message: str, **details: Any) -> NoReturn:
    raise InvalidDocumentError(message, reason=reason, **details)


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _invalid("duplicate_key", f"duplicate key {key!r}", key=key)
            seen.add(key)
    return obj


def _reject_constant(name: str) -> NoReturn:
    _invalid("non_finite_number", f"{name} is not valid JSON", value=name)


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)

# Tuples, not ``dict | list`` unions: a union written inside the loop is rebuilt for every item,
# which made the walk cost three times the JSON decode itself.
_CONTAINERS = (dict, list)
_SCALARS = (str, int, float, type(None))


def _check_tree(root: object, max_depth: int) -> None:
    """Check nesting depth, value types and finiteness without recursion.

    One walk serves both directions: bytes from disk (where ``1e400`` decodes to infinity) and
    content from callers (where a tuple, a set or an int key would not survive a round trip).
    """
    stack: list[tuple[object, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            _invalid("too_deep", f"nesting deeper than {max_depth} levels", limit=max_depth)
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    _invalid("invalid_key", f"object key {key!r} is not a string")
                if isinstance(item, _CONTAINERS):
                    stack.append((item, depth + 1))
                elif isinstance(item, float) and not math.isfinite(item):
                    _invalid("non_finite_number", f"non-finite number at key {key!r}")
                elif not isinstance(item, _SCALARS):
                    _invalid("invalid_type", f"value of type {type(item).__name__} at key {key!r}")
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, _CONTAINERS):
                    stack.append((item, depth + 1))
                elif isinstance(item, float) and not math.isfinite(item):
                    _invalid("non_finite_number", "non-finite number in an array")
                elif not isinstance(item, _SCALARS):
                    _invalid("invalid_type", f"value of type {type(item).__name__} in an array")


_PLAIN_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_vouched(text: str, max_depth: int) -> dict[str, Any] | None:
    r"""Decode with the C scanner alone, or return ``None`` when that cannot vouch for ``text``.

    The duplicate-key hook makes the scanner build a list of pairs per object and doubles the
    decode, so valid documents are proven duplicate-free by counting instead. In valid JSON every
    ``:`` either separates a key from its value or sits inside a string, so the colons of the text
    equal the pairs plus the colons of the strings; a dropped duplicate would take its pair (and
    its strings) out of the decoded tree and break the equality. ``\u`` escapes could spell a
    colon or a key differently, so such texts are not vouched for. ``None`` sends the text down
    the strict path, which decides and names any error exactly as it always has.
    """
    if "\\u" in text or "\\U" in text:
        return None
    try:
        value = _PLAIN_DECODER.decode(text)
    except Exception:  # any error is the strict path's to report, with its precise reason
        return None
    if type(value) is not dict:
        return None
    pairs = 0
    strings: list[str] = []
    level: list[Any] = [value]
    depth = 1
    while level:  # breadth-first, one level per pass: the depth comes for free
        if depth > max_depth:
            return None
        below: list[Any] = []
        for node in level:
            items = node
            if type(node) is dict:
                pairs += len(node)
                strings.extend(node)
                items = node.values()
            for item in items:
                kind = type(item)
                if kind is str:
                    strings.append(item)
                elif kind is dict or kind is list:
                    below.append(item)
                elif kind is float and not math.isfinite(item):
                    return None
        level = below
        depth += 1
    colons = text.count(":")
    if colons != pairs and colons != pairs + "".join(strings).count(":"):
        return None
    return value


def _check_size(data: bytes, limits: DocumentLimits) -> None:
    if len(data) > limits.max_bytes:
        raise DocumentTooLargeError(
            f"document of {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes",
            reason="too_large",
            size=len(data),
            limit=limits.max_bytes,
        )


def decode_document(data: bytes, limits: DocumentLimits = DocumentLimits()) -> dict[str, Any]:
    """Decode stored or uploaded bytes into a config object, or raise `InvalidDocumentError`."""
    _check_size(data, limits)
    if not data.strip():  # the words the server uses for an empty body, not "Expecting value"
        _invalid("empty", "document is empty", line=1, column=1)
    if data.startswith(_BOM):
        _invalid(
            "byte_order_mark", "document starts with a UTF-8 byte order mark", line=1, column=1
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8")
        line, column = _line_col(good, len(good))
        _invalid(
            "invalid_utf8",
            f"invalid UTF-8 at byte {exc.start} (line {line}, column {column})",
            byte=exc.start,
            line=line,
            column=column,
        )
    vouched = _decode_vouched(text, limits.max_depth)
    if vouched is not None:
        return vouched
    try:
        value = _DECODER.decode(text)
    except InvalidDocumentError:
        raise
    except json.JSONDecodeError as exc:
        _invalid(
            "syntax",
            f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            line=exc.lineno,
            column=exc.colno,
        )
    except RecursionError:
        _invalid(
            "too_deep", f"nesting deeper than {limits.max_depth} levels", limit=limits.max_depth
        )
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        _invalid("invalid_number", f"invalid JSON number: {exc}")
    if not isinstance(value, dict):
        kind = "array" if isinstance(value, list) else type(value).__name__
        _invalid(
            "not_an_object", f"document must be a JSON object, not {_JSON_KIND.get(kind, kind)}"
        )
    _check_tree(value, limits.max_depth)
    if "\\u" in text or "\\U" in text:
        # Lone surrogates (\ud800) decode but cannot be written back as UTF-8.
        _check_encodable(value)
    return value


_JSON_KIND = {
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "null",
    "array": "an array",
}


def _check_encodable(value: dict[str, Any]) -> None:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        _invalid("lone_surrogate", "string contains a lone UTF-16 surrogate escape")


def encode_document(content: Mapping[str, Any], limits: DocumentLimits = DocumentLimits()) -> bytes:
    """The bytes to store for ``content``: pretty-printed UTF-8 JSON with a trailing newline.

    Raises `InvalidDocumentError` for content that would not decode back to itself, and
    `DocumentTooLargeError` when the encoded bytes exceed ``limits.max_bytes``.
    """
    if not isinstance(content, Mapping):
        _invalid("not_an_object", f"content must be a JSON object, not {type(content).__name__}")
    content = dict(content)
    _check_tree(content, limits.max_depth)
    try:
        data = (json.dumps(content, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    except UnicodeEncodeError:
        _invalid("lone_surrogate", "string contains a lone UTF-16 surrogate")
    except ValueError as exc:  # integers beyond Python's digit limit
        _invalid("invalid_number", f"cannot encode number: {exc}")
    _check_size(data, limits)
    return data
