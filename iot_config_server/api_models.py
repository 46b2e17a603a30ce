"""The REST API's JSON shapes: the core's config shapes plus the HTTP envelopes, and their names.

A config and a listing have one JSON form, `iot_config_core.wire` (scripts use it too); this
module adds what only HTTP has: the PUT request, the error body, the health reports. Every body is
produced and parsed through `api_converter`, and the OpenAPI document is derived from these same
classes under the names in `SCHEMA_NAMES`, so neither the schema nor a generated client can drift
from the answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
from cattrs.gen import make_dict_unstructure_fn, override

from iot_config_core import ConfigSummary
from iot_config_core.wire import ConfigListWire, ConfigWire
from iot_config_core.wire import converter as core_converter

__all__ = [
    "ERROR_BODY_RENAMES",
    "SCHEMA_NAMES",
    "ErrorBody",
    "HealthyReport",
    "PutConfigRequest",
    "SchemaName",
    "UnhealthyReport",
    "api_converter",
]

#: The core's converter plus hooks for the shapes below (a copy: the core's stays untouched).
api_converter = core_converter.copy()


@attrs.frozen
class ErrorBody:
    """The JSON body of every error answer; ``details`` is always an object."""

    error: str
    code: str
    #: The HTTP status again, for clients that decide from the body whether retrying can help.
    status: int
    details: dict[str, Any]
    correlation_id: str


#: Wire name of each `ErrorBody` field whose Python name differs (the web UI expects camelCase).
ERROR_BODY_RENAMES = {"correlation_id": "correlationId"}

_renames: dict[str, Any] = {
    name: override(rename=wire) for name, wire in ERROR_BODY_RENAMES.items()
}
api_converter.register_unstructure_hook(
    ErrorBody,
    make_dict_unstructure_fn(
        ErrorBody,
        api_converter,
        details=override(unstruct_hook=dict),
        **_renames,
    ),
)


@attrs.frozen
class PutConfigRequest:
    """The body of ``PUT /api/configs/<mac>``. Unknown keys are ignored (older UIs send extras)."""

    content: dict[str, Any]
    allow_overwrite: bool = True


@attrs.frozen
class HealthyReport:
    """``/api/health`` answer while the store works."""

    status: Literal["healthy"] = "healthy"


@attrs.frozen
class UnhealthyReport:
    """``/api/health`` answer (with status 503) while the store fails."""

    status: Literal["unhealthy"] = "unhealthy"
    reason: str = attrs.field(kw_only=True)


@attrs.frozen
class SchemaName:
    """Where a shape appears in the OpenAPI document: component key and schema title."""

    key: str
    title: str


#: The old service's component keys and titles: client generators name types after them, so
#: code written against a client generated from its document compiles against one from ours.
#: Shapes not listed are named after their class.
SCHEMA_NAMES: Mapping[type, SchemaName] = {
    ConfigListWire: SchemaName("ConfigListResponseSchema.6be28b6", "ConfigListResponseSchema"),
    ConfigSummary: SchemaName(
        "ConfigListResponseSchema.6be28b6.ConfigSummarySchema", "ConfigSummarySchema"
    ),
    ConfigWire: SchemaName("ConfigResponseSchema.6be28b6", "ConfigResponseSchema"),
    PutConfigRequest: SchemaName("ConfigSaveRequestSchema.6be28b6", "ConfigSaveRequestSchema"),
    ErrorBody: SchemaName("ErrorResponseSchema.8c5cd6b", "ErrorResponseSchema"),
}
