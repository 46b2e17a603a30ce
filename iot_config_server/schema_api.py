"""The JSON shapes of ``/api/schemas`` and ``/api/validation``, and the PUT body's parse.

The validation report is the core's `SchemaReport` as it is (its classes are plain attrs values);
only the schema envelopes are HTTP's own.
"""

from __future__ import annotations

from typing import Any

import attrs

from iot_config_core import DocumentLimits, InvalidDocumentError, StoredSchema, decode_document

from .http_errors import ApiError, ApiErrorCode
from .request_body import ENVELOPE_ALLOWANCE

__all__ = ["PutSchemaRequest", "SchemaListWire", "SchemaWire", "parse_put_schema", "schema_wire"]


@attrs.frozen
class SchemaWire:
    """One stored JSON Schema (draft-07) and whether it only warns."""

    name: str
    relaxed: bool
    schema: dict[str, Any]


@attrs.frozen
class SchemaListWire:
    """The names of the stored schemas, sorted."""

    schemas: list[str]


@attrs.frozen
class PutSchemaRequest:
    """The body of ``PUT /api/schemas/<name>``: a draft-07 schema; ``relaxed`` only warns."""

    schema: dict[str, Any]
    relaxed: bool = False


def schema_wire(stored: StoredSchema) -> dict[str, Any]:
    """The JSON answer for a stored schema."""
    return {"name": stored.name, "relaxed": stored.relaxed, "schema": dict(stored.schema)}


def parse_put_schema(data: bytes, limits: DocumentLimits) -> PutSchemaRequest:
    """Decode a schema PUT body with the core's strict JSON rules and check its envelope."""
    envelope = DocumentLimits(
        max_bytes=limits.max_bytes + ENVELOPE_ALLOWANCE, max_depth=limits.max_depth + 1
    )
    try:
        body = decode_document(data, envelope)
    except InvalidDocumentError as exc:
        raise ApiError(
            ApiErrorCode.INVALID_BODY,
            f'the request body is not a JSON object {{"schema": {{...}}}} ({exc.message})',
            **exc.details,
        ) from None
    schema = body.get("schema")
    relaxed = body.get("relaxed", False)
    if not isinstance(schema, dict):
        raise ApiError(
            ApiErrorCode.INVALID_BODY,
            'the request body has no "schema" object',
            reason="missing_schema",
        )
    if not isinstance(relaxed, bool):
        raise ApiError(
            ApiErrorCode.INVALID_BODY,
            '"relaxed" must be true or false',
            reason="relaxed_not_boolean",
        )
    return PutSchemaRequest(schema, relaxed)
