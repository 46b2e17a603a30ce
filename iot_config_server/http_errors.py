"""The one table from error codes to HTTP statuses and wire codes, and the error body shape.

Core errors (`iot_config_core.errors`) carry stable codes; the HTTP layer's own problems (a bad
header, a body of the wrong type) are `ApiError` with codes of the same kind. Both go through
`ERROR_TABLE`, so a status is decided in exactly one place. Wire codes the existing web UI knows
(``RECORD_NOT_FOUND``, ``INVALID_OPERATION``) are kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from iot_config_core import ConfigError

from .api_models import ErrorBody, api_converter

__all__ = [
    "ERROR_TABLE",
    "ApiError",
    "HttpError",
    "error_body_bytes",
    "http_error_for",
    "wire_codes",
]


@attrs.frozen
class HttpError:
    """How one error code is answered over HTTP."""

    status: int
    wire_code: str


#: error code (core `ConfigError.code` or `ApiError.code`) -> HTTP status and wire code.
ERROR_TABLE: Mapping[str, HttpError] = {
    # core errors
    "INVALID_MAC": HttpError(400, "INVALID_OPERATION"),  # the old service's code
    "INVALID_DOCUMENT": HttpError(400, "INVALID_DOCUMENT"),
    "DOCUMENT_TOO_LARGE": HttpError(413, "PAYLOAD_TOO_LARGE"),
    "INVALID_ETAG": HttpError(400, "INVALID_HEADER"),
    "NOT_FOUND": HttpError(404, "RECORD_NOT_FOUND"),  # the old service's code
    "ALREADY_EXISTS": HttpError(409, "CONFLICT"),
    "PRECONDITION_FAILED": HttpError(412, "PRECONDITION_FAILED"),
    "CORRUPT_DOCUMENT": HttpError(422, "CORRUPT_DOCUMENT"),
    "STORE_UNAVAILABLE": HttpError(503, "STORE_UNAVAILABLE"),
    "STORE_BUSY": HttpError(503, "STORE_BUSY"),  # shed by the store gate: the store is slow
    # The store cannot do this safely at all (radosgw ignores If-Match on DELETE): retrying
    # will not help, so not a 503.
    "UNSUPPORTED_STORE": HttpError(501, "NOT_SUPPORTED_BY_STORE"),
    "CONFIG_ERROR": HttpError(500, "INTERNAL_ERROR"),
    # HTTP-layer errors
    "BAD_REQUEST": HttpError(400, "BAD_REQUEST"),
    "INVALID_BODY": HttpError(400, "INVALID_BODY"),
    "INVALID_HEADER": HttpError(400, "INVALID_HEADER"),
    "UNAUTHORIZED": HttpError(401, "UNAUTHORIZED"),
    "ROUTE_NOT_FOUND": HttpError(404, "NOT_FOUND"),
    "METHOD_NOT_ALLOWED": HttpError(405, "METHOD_NOT_ALLOWED"),
    "PAYLOAD_TOO_LARGE": HttpError(413, "PAYLOAD_TOO_LARGE"),
    "UNSUPPORTED_MEDIA_TYPE": HttpError(415, "UNSUPPORTED_MEDIA_TYPE"),
    "DOCS_UNAVAILABLE": HttpError(503, "DOCS_UNAVAILABLE"),
    "INTERNAL_ERROR": HttpError(500, "INTERNAL_ERROR"),
}

_FALLBACK = ERROR_TABLE["INTERNAL_ERROR"]


class ApiError(Exception):
    """A request the HTTP layer refuses before (or instead of) calling the core."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        if code not in ERROR_TABLE:
            raise AssertionError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: Mapping[str, Any] = details


def http_error_for(error: ConfigError | ApiError) -> HttpError:
    """The status and wire code of ``error``; an unknown core code is a 500 (a bug to fix)."""
    return ERROR_TABLE.get(error.code, _FALLBACK)


def wire_codes() -> list[str]:
    """Every wire code the API can answer with, for the OpenAPI enum."""
    return sorted({entry.wire_code for entry in ERROR_TABLE.values()})


def error_body_bytes(message: str, wire_code: str, details: Mapping[str, Any], rid: str) -> bytes:
    """Serialize an error body; details that are not JSON (a path object, say) become strings."""
    body = ErrorBody(error=message, code=wire_code, details=dict(details), correlation_id=rid)
    return json.dumps(api_converter.unstructure(body), default=str, ensure_ascii=False).encode()
