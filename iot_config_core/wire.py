"""The JSON form of a config and of a listing, produced by one cattrs converter.

The REST API serves exactly these shapes (the server adds only its HTTP envelopes and derives its
OpenAPI document from the same classes), and scripts can write the same JSON. The existing web
UI's client was generated from them, so they are fixed: snake_case keys, canonical MAC strings,
``null`` for absent summary fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from .mac import MacAddress
from .model import ConfigSummary, StoredConfig

__all__ = [
    "SUMMARY_FILE_FIELDS",
    "ConfigListWire",
    "ConfigWire",
    "config_to_wire",
    "converter",
    "summaries_to_wire",
    "summary_to_wire",
]

converter = cattrs.Converter()
converter.register_unstructure_hook(MacAddress, str)
converter.register_structure_hook(MacAddress, lambda value, _: MacAddress.parse(value))
converter.register_unstructure_hook(datetime, datetime.isoformat)
converter.register_structure_hook(datetime, lambda value, _: datetime.fromisoformat(value))


# File metadata (etag, size, modified) travels in headers and the CLI, not in the API's JSON.
SUMMARY_FILE_FIELDS = ("etag", "size", "modified")
summary_to_wire = make_dict_unstructure_fn(
    ConfigSummary,
    converter,
    etag=override(omit=True),
    size=override(omit=True),
    modified=override(omit=True),
)
converter.register_unstructure_hook(ConfigSummary, summary_to_wire)


@attrs.frozen
class ConfigWire:
    """The answer of ``GET``/``PUT /api/configs/<mac>``: the summary fields plus the content."""

    mac_address: MacAddress
    device_name: str | None
    device_entity_id: str | None
    enable_ota: bool | None
    content: dict[str, Any]


@attrs.frozen
class ConfigListWire:
    """The answer of ``GET /api/configs``."""

    configs: list[ConfigSummary]
    count: int


converter.register_unstructure_hook(
    ConfigWire,
    make_dict_unstructure_fn(ConfigWire, converter, content=override(unstruct_hook=dict)),
)


def summaries_to_wire(summaries: list[ConfigSummary]) -> dict[str, Any]:
    """The ``GET /api/configs`` answer for a sorted list of summaries."""
    result: dict[str, Any] = converter.unstructure(ConfigListWire(summaries, len(summaries)))
    return result


def config_to_wire(config: StoredConfig) -> dict[str, Any]:
    """The ``GET``/``PUT /api/configs/<mac>`` answer for a stored config."""
    summary = config.summary
    wire = ConfigWire(
        mac_address=config.mac_address,
        device_name=summary.device_name,
        device_entity_id=summary.device_entity_id,
        enable_ota=summary.enable_ota,
        content=dict(config.content),
    )
    result: dict[str, Any] = converter.unstructure(wire)
    return result
