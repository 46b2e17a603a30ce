"""The JSON shapes the HTTP layer adds to the core's (`iot_config_core.wire`).

Bodies are produced and parsed through `api_converter`, and the OpenAPI document is derived from
these same classes, so the schema cannot drift from the answers.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from cattrs.gen import make_dict_unstructure_fn, override

from iot_config_core.wire import converter as core_converter

__all__ = [
    "ERROR_BODY_RENAMES",
    "ErrorBody",
    "HealthyReport",
    "PutConfigRequest",
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
