"""The REST wire shapes: fixed snake_case keys, canonical MACs, null for absent summary fields."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from iot_config_core import (
    ConfigSummary,
    DocumentLimits,
    MacAddress,
    RawDocument,
    StoredConfig,
    open_store,
)
from iot_config_core.wire import (
    SUMMARY_FILE_FIELDS,
    ConfigListWire,
    config_to_wire,
    converter,
    summaries_to_wire,
    summary_to_wire,
)
from iot_config_server.api_models import PutConfigRequest, api_converter
from iot_config_server.request_body import parse_put_request

MAC = MacAddress.parse("AA:BB:CC:DD:EE:FF")
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _config(content: dict[str, Any]) -> StoredConfig:
    return StoredConfig(MAC, content, etag="e", size=10, modified=WHEN)


def test_config_shape() -> None:
    content = {"deviceName": "kitchen", "deviceEntityId": "light.k", "enableOTA": False, "x": [1]}
    wire = config_to_wire(_config(content))
    assert wire == {
        "mac_address": "aa-bb-cc-dd-ee-ff",
        "device_name": "kitchen",
        "device_entity_id": "light.k",
        "enable_ota": False,
        "content": content,
    }
    assert json.loads(json.dumps(wire)) == wire


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"deviceName": 5, "deviceEntityId": ["x"], "enableOTA": "true"},
        {"deviceName": None, "deviceEntityId": {}, "enableOTA": 1},
    ],
)
def test_missing_or_wrong_typed_summary_fields_are_null(content: dict[str, Any]) -> None:
    wire = config_to_wire(_config(content))
    assert wire["device_name"] is None
    assert wire["device_entity_id"] is None
    assert wire["enable_ota"] is None
    assert wire["content"] == content


def test_summary_shape_omits_file_metadata() -> None:
    summary = ConfigSummary.from_content(
        MAC, {"deviceName": "hall", "enableOTA": True}, etag="e", size=3, modified=WHEN
    )
    wire = summary_to_wire(summary)
    assert wire == {
        "mac_address": "aa-bb-cc-dd-ee-ff",
        "device_name": "hall",
        "device_entity_id": None,
        "enable_ota": True,
    }
    assert converter.unstructure(summary) == wire
    assert not set(SUMMARY_FILE_FIELDS) & set(wire)


def test_list_shape_from_a_real_store() -> None:
    store = open_store("memory://wire", create=True)
    store.put("00:00:00:00:00:02", {"deviceName": "b"})
    store.put("00:00:00:00:00:01", {"enableOTA": True})
    wire = summaries_to_wire(store.list())
    assert wire == {
        "configs": [
            {
                "mac_address": "00-00-00-00-00-01",
                "device_name": None,
                "device_entity_id": None,
                "enable_ota": True,
            },
            {
                "mac_address": "00-00-00-00-00-02",
                "device_name": "b",
                "device_entity_id": None,
                "enable_ota": None,
            },
        ],
        "count": 2,
    }
    assert converter.unstructure(ConfigListWire(store.list(), 2)) == wire
    assert summaries_to_wire([]) == {"configs": [], "count": 0}
    stored = store.get("00:00:00:00:00:02")
    assert config_to_wire(stored)["content"] == {"deviceName": "b"}


def test_converter_hooks_for_domain_types() -> None:
    assert converter.unstructure(MAC) == "aa-bb-cc-dd-ee-ff"
    assert converter.structure("AA:BB:CC:DD:EE:FF", MacAddress) == MAC
    assert converter.unstructure(WHEN) == "2026-01-02T03:04:05+00:00"
    assert converter.structure("2026-01-02T03:04:05+00:00", datetime) == WHEN


def test_model_values() -> None:
    raw = RawDocument(MAC, b"{}\n", etag="e", modified=None)
    assert raw.size == 3
    assert "<3 bytes>" in repr(raw)
    config = _config({"deviceName": "d"})
    assert config.summary.device_name == "d"
    assert config.summary.etag == "e"
    assert config.summary.size == 10
    assert config.summary.modified == WHEN


def test_put_request_is_structured_by_the_api_converter() -> None:
    """Defaults and ignored extras come from the class the OpenAPI schema is built from."""
    limits = DocumentLimits()
    body = b'{"content": {"deviceName": "k"}, "mac_address": "sent by old UIs"}'
    assert parse_put_request(body, limits) == PutConfigRequest({"deviceName": "k"})
    assert PutConfigRequest({}).allow_overwrite is True
    strict = parse_put_request(b'{"content": {}, "allow_overwrite": false}', limits)
    assert api_converter.unstructure(strict) == {"content": {}, "allow_overwrite": False}
