"""What every error code means to a client: HTTP status, headers, wire code, message, exit status.

Core errors (`iot_config_core.ErrorCode`) and the HTTP layer's own problems (`ApiErrorCode`: a bad
header, a body of the wrong type) go through `ERROR_TABLE`, the one place that decides the status,
the extra headers (``WWW-Authenticate``, ``Retry-After``) the app sends and the OpenAPI document
lists, and the exit status of the CLI. Wire codes and messages the old service's clients know
(``RECORD_NOT_FOUND``, ``INVALID_OPERATION``, ``Cannot get config because ...``) are kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import Any

import attrs

from iot_config_core import ConfigError, ErrorCode

from .api_models import ErrorBody, api_converter

__all__ = [
    "ERROR_TABLE",
    "ApiError",
    "ApiErrorCode",
    "Code",
    "ErrorRule",
    "ExitStatus",
    "error_body_bytes",
    "exit_status_for",
    "http_error_for",
    "user_message",
    "wire_codes",
]


class ApiErrorCode(StrEnum):
    """Codes of the problems the HTTP layer finds before (or instead of) calling the core."""

    BAD_REQUEST = "BAD_REQUEST"
    INVALID_BODY = "INVALID_BODY"
    INVALID_HEADER = "INVALID_HEADER"
    UNAUTHORIZED = "UNAUTHORIZED"
    ROUTE_NOT_FOUND = "ROUTE_NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    STORE_BUSY = "STORE_BUSY"
    DOCS_UNAVAILABLE = "DOCS_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


#: Any code an error answer can be decided from.
Code = ErrorCode | ApiErrorCode


class ExitStatus(IntEnum):
    """Exit statuses of the ``iot-config`` command line."""

    OK = 0
    #: A document, a precondition or a lookup failed: retrying the same command will not help.
    FAILED = 1
    #: The command line itself was wrong (argparse uses 2 as well).
    USAGE = 2
    #: The store could not be reached or failed; retrying later may succeed.
    UNAVAILABLE = 3


#: Sent with answers where retrying shortly can help (the store is down or overloaded).
RETRY_AFTER = (("Retry-After", "1"),)
#: RFC 9110 requires a challenge with every 401.
WWW_AUTHENTICATE = (("WWW-Authenticate", 'Bearer realm="iot-config"'),)


@attrs.frozen
class ErrorRule:
    """How one error code is answered: over HTTP, and by the CLI."""

    status: int
    wire_code: str
    exit_status: ExitStatus = ExitStatus.FAILED
    headers: tuple[tuple[str, str], ...] = ()
    #: Why an action failed, completing "Cannot <action> because ...": a template over the
    #: error's details and its ``message`` (a core message is terse; an admin reads this one).
    cause: str = "{message}"


ERROR_TABLE: Mapping[Code, ErrorRule] = {
    # core errors
    # The old service's code and words.
    ErrorCode.INVALID_MAC: ErrorRule(
        400, "INVALID_OPERATION", ExitStatus.USAGE, cause="MAC address {value!r} has invalid format"
    ),
    ErrorCode.INVALID_DOCUMENT: ErrorRule(
        400, "INVALID_DOCUMENT", cause="the content is not a valid config document ({message})"
    ),
    ErrorCode.DOCUMENT_TOO_LARGE: ErrorRule(
        413,
        "PAYLOAD_TOO_LARGE",
        cause="the document is {size} bytes, over the limit of {limit} bytes",
    ),
    ErrorCode.INVALID_ETAG: ErrorRule(
        400, "INVALID_HEADER", ExitStatus.USAGE, cause="an entity tag is malformed ({message})"
    ),
    ErrorCode.INVALID_QUERY: ErrorRule(400, "INVALID_QUERY", ExitStatus.USAGE),
    # The old service's code; its message is built in `user_message`.
    ErrorCode.NOT_FOUND: ErrorRule(404, "RECORD_NOT_FOUND"),
    ErrorCode.ALREADY_EXISTS: ErrorRule(
        409, "CONFLICT", cause="{message} and allow_overwrite is false"
    ),
    ErrorCode.PRECONDITION_FAILED: ErrorRule(
        412,
        "PRECONDITION_FAILED",
        cause="the If-Match/If-None-Match condition did not hold: {message}",
    ),
    ErrorCode.CORRUPT_DOCUMENT: ErrorRule(
        422,
        "CORRUPT_DOCUMENT",
        cause="the stored file is damaged ({message}); saving a valid config repairs it",
    ),
    ErrorCode.STORED_DOCUMENT_TOO_LARGE: ErrorRule(
        422,
        "STORED_DOCUMENT_TOO_LARGE",
        cause="the stored file is {size} bytes, over the limit of {limit} bytes; saving a "
        "valid config repairs it",
    ),
    ErrorCode.STORE_UNAVAILABLE: ErrorRule(
        503,
        "STORE_UNAVAILABLE",
        ExitStatus.UNAVAILABLE,
        RETRY_AFTER,
        cause="the config store is unavailable ({message}); try again later",
    ),
    # The store cannot do this safely at all (radosgw ignores If-Match on DELETE): retrying
    # will not help, so not a 503.
    ErrorCode.UNSUPPORTED_STORE: ErrorRule(
        501,
        "NOT_SUPPORTED_BY_STORE",
        ExitStatus.USAGE,
        cause="the config store cannot do this safely ({message})",
    ),
    ErrorCode.INVALID_PATCH: ErrorRule(
        400, "INVALID_PATCH", cause="the patch is malformed ({message})"
    ),
    # RFC 5789: a patch that cannot apply to the current state is a conflict.
    ErrorCode.PATCH_CONFLICT: ErrorRule(
        409, "PATCH_CONFLICT", cause="the patch does not apply ({message})"
    ),
    ErrorCode.INVALID_SCHEMA: ErrorRule(
        400, "INVALID_SCHEMA", cause="the schema is not accepted ({message})"
    ),
    ErrorCode.SCHEMA_VIOLATION: ErrorRule(
        422, "SCHEMA_VIOLATION", cause="the config does not satisfy schema {schema!r} ({message})"
    ),
    ErrorCode.CONFIG_ERROR: ErrorRule(500, "INTERNAL_ERROR"),
    # Device credentials (`iot_config_core.device_tokens`): the device routes answer a refused
    # token as ApiErrorCode.UNAUTHORIZED themselves; these rows say what the codes mean elsewhere.
    ErrorCode.INVALID_DEVICE_TOKEN: ErrorRule(401, "UNAUTHORIZED", headers=WWW_AUTHENTICATE),
    ErrorCode.INVALID_DEVICE_SECRET: ErrorRule(500, "INTERNAL_ERROR", ExitStatus.USAGE),
    ErrorCode.VERSION_NOT_FOUND: ErrorRule(
        404, "VERSION_NOT_FOUND", cause="{message}; GET .../history lists the versions kept"
    ),
    # HTTP-layer errors
    ApiErrorCode.BAD_REQUEST: ErrorRule(400, "BAD_REQUEST", ExitStatus.USAGE),
    ApiErrorCode.INVALID_BODY: ErrorRule(400, "INVALID_BODY"),
    ApiErrorCode.INVALID_HEADER: ErrorRule(400, "INVALID_HEADER", ExitStatus.USAGE),
    ApiErrorCode.UNAUTHORIZED: ErrorRule(401, "UNAUTHORIZED", headers=WWW_AUTHENTICATE),
    ApiErrorCode.ROUTE_NOT_FOUND: ErrorRule(404, "NOT_FOUND"),
    ApiErrorCode.METHOD_NOT_ALLOWED: ErrorRule(405, "METHOD_NOT_ALLOWED"),
    ApiErrorCode.PAYLOAD_TOO_LARGE: ErrorRule(413, "PAYLOAD_TOO_LARGE"),
    ApiErrorCode.UNSUPPORTED_MEDIA_TYPE: ErrorRule(415, "UNSUPPORTED_MEDIA_TYPE"),
    # Shed by the store gate: the store is slow, a moment later it may not be.
    ApiErrorCode.STORE_BUSY: ErrorRule(503, "STORE_BUSY", ExitStatus.UNAVAILABLE, RETRY_AFTER),
    # A missing package: retrying does not install it.
    ApiErrorCode.DOCS_UNAVAILABLE: ErrorRule(503, "DOCS_UNAVAILABLE"),
    ApiErrorCode.INTERNAL_ERROR: ErrorRule(500, "INTERNAL_ERROR"),
}

_FALLBACK = ERROR_TABLE[ApiErrorCode.INTERNAL_ERROR]


class ApiError(Exception):
    """A request the HTTP layer refuses before (or instead of) calling the core.

    ``message`` is a clause that completes "Cannot save config because ..." (lowercase, no final
    period); `user_message` turns it into the sentence an admin sees.
    """

    def __init__(self, code: ApiErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: Mapping[str, Any] = details


def http_error_for(error: ConfigError | ApiError) -> ErrorRule:
    """The rule for ``error``'s code, else for the nearest base class's; else a 500 (a bug)."""
    rule = ERROR_TABLE.get(error.code)
    if rule is not None:
        return rule
    for cls in type(error).__mro__:
        if issubclass(cls, ConfigError) and cls.code in ERROR_TABLE:
            return ERROR_TABLE[cls.code]
    return _FALLBACK


def exit_status_for(error: ConfigError) -> ExitStatus:
    """The CLI's exit status for a core error, from the same table as its HTTP status."""
    return http_error_for(error).exit_status


def wire_codes() -> list[str]:
    """Every wire code the API can answer with, for the OpenAPI enum."""
    return sorted({entry.wire_code for entry in ERROR_TABLE.values()})


def _cause(error: ConfigError | ApiError) -> str:
    """Why an operation failed, as a clause after "because" (the core's message if no template)."""
    try:
        return http_error_for(error).cause.format_map({**error.details, "message": error.message})
    except (KeyError, IndexError, ValueError):  # details without the facts the template names
        return error.message


def user_message(error: ConfigError | ApiError, action: str) -> str:
    """The sentence an admin is shown, in the old service's style.

    ``action`` is what the route does (``"get config"``), or empty for routes that are not about
    a config. A missing config reads ``Config <mac> was not found``; any other failure of an
    action ``Cannot <action> because <cause>``, exactly as the old service worded its cases.
    """
    if error.code is ErrorCode.NOT_FOUND and "mac_address" in error.details:
        return f"Config {error.details['mac_address']} was not found"
    cause = _cause(error)
    if action:
        return f"Cannot {action} because {cause}"
    return cause[:1].upper() + cause[1:]


def error_body_bytes(message: str, rule: ErrorRule, details: Mapping[str, Any], rid: str) -> bytes:
    """Serialize an error body; details that are not JSON (a path object, say) become strings."""
    body = ErrorBody(
        error=message,
        code=rule.wire_code,
        status=rule.status,
        details=dict(details),
        correlation_id=rid,
    )
    return json.dumps(api_converter.unstructure(body), default=str, ensure_ascii=False).encode()
