"""JSON Schema validation: the rule that picks a schema, schemas in the store, and the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import webtest

from iot_config_core import (
    ConfigStore,
    InvalidSchemaError,
    MergePatch,
    NotFoundError,
    PreconditionFailedError,
    SchemaViolationError,
    open_store,
)
from iot_config_core.legacy import LegacyDirectory
from iot_config_server import Settings, create_app

MAC = "aa-bb-cc-dd-ee-01"
OTHER = "aa-bb-cc-dd-ee-02"
SENSOR: dict[str, Any] = {
    "type": "object",
    "required": ["pollSeconds"],
    "properties": {
        "pollSeconds": {"type": "integer", "minimum": 5},
        "wifi": {"type": "object", "properties": {"channel": {"type": "integer"}}},
        "a/b": {"type": "string"},
    },
}


@pytest.fixture
def store() -> ConfigStore:
    return open_store("memory://schemas", create=True)


def test_the_schema_named_by_device_model_applies(store: ConfigStore) -> None:
    store.schemas.put("sensor", SENSOR)
    result = store.validate({"deviceModel": "sensor", "pollSeconds": 1, "wifi": {"channel": "x"}})
    assert result.schema == "sensor"
    assert [(p.pointer, p.message) for p in result.problems] == [
        ("/pollSeconds", "1 is less than the minimum of 5"),
        ("/wifi/channel", "'x' is not of type 'integer'"),
    ]
    assert store.validate({"deviceModel": "sensor", "a/b": 1, "pollSeconds": 5}).problems[
        0
    ].pointer == ("/a~1b")


def test_default_applies_when_no_named_schema_is_stored(store: ConfigStore) -> None:
    assert store.validate({"anything": 1}).schema is None
    store.schemas.put("default", {"required": ["deviceName"]})
    assert store.validate({"deviceModel": "unknown"}).schema == "default"
    assert store.validate({"deviceModel": 5}).schema == "default"
    assert store.validate({"deviceName": "x"}).valid


def test_a_violation_writes_nothing_and_lists_every_problem(store: ConfigStore) -> None:
    before = store.put(MAC, {"deviceModel": "sensor", "pollSeconds": 30})
    store.schemas.put("sensor", SENSOR)
    with pytest.raises(SchemaViolationError) as caught:
        store.put(MAC, {"deviceModel": "sensor", "pollSeconds": 1, "wifi": {"channel": "x"}})
    assert caught.value.details["schema"] == "sensor"
    assert [p["pointer"] for p in caught.value.details["problems"]] == [
        "/pollSeconds",
        "/wifi/channel",
    ]
    with pytest.raises(SchemaViolationError):
        store.patch(MAC, MergePatch({"pollSeconds": "often"}))
    with pytest.raises(SchemaViolationError):
        store.put(MAC, {"deviceModel": "sensor"}, dry_run=True)
    assert store.get(MAC).etag == before.etag


def test_a_relaxed_schema_reports_but_lets_writes_through(store: ConfigStore) -> None:
    store.schemas.put("sensor", SENSOR, relaxed=True)
    store.put(MAC, {"deviceModel": "sensor"})
    report = store.schema_report()
    assert report.violations[0].relaxed
    assert report.violations[0].problems[0].message == "'pollSeconds' is a required property"


def test_a_changed_schema_is_used_from_the_next_write(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    replica = open_store(str(tmp_path))
    store.schemas.put("sensor", SENSOR)
    replica.put(MAC, {"deviceModel": "sensor", "pollSeconds": 5})  # compiles and caches
    store.schemas.put("sensor", {**SENSOR, "properties": {"pollSeconds": {"minimum": 10}}})
    with pytest.raises(SchemaViolationError):
        replica.put(MAC, {"deviceModel": "sensor", "pollSeconds": 5})


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "nope"}, "meta_schema"),
        ({"properties": {"a": {"minimum": "1"}}}, "meta_schema"),
        ({"$ref": "https://example.com/schema.json"}, "remote_ref"),
        ({"properties": {"p": {"$id": "http://127.0.0.1:9/p.json"}}}, "remote_ref"),
        ({"$schema": "https://json-schema.org/draft/2020-12/schema"}, "draft"),
    ],
)
def test_schemas_are_checked_before_they_are_accepted(
    store: ConfigStore, schema: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidSchemaError) as caught:
        store.schemas.put("sensor", schema)
    assert caught.value.details["reason"] == reason
    assert store.schemas.names() == []


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 65, "naïve"])
def test_schema_names_are_plain(store: ConfigStore, name: str) -> None:
    with pytest.raises(InvalidSchemaError):
        store.schemas.put(name, {})


def test_defaults_in_a_schema_never_change_the_content(store: ConfigStore) -> None:
    store.schemas.put("default", {"properties": {"pollSeconds": {"default": 60}}})
    assert store.put(MAC, {"deviceName": "x"}).content == {"deviceName": "x"}


def test_schema_preconditions_and_deletion(store: ConfigStore) -> None:
    first = store.schemas.put("sensor", SENSOR)
    with pytest.raises(PreconditionFailedError):
        store.schemas.put("sensor", {}, if_match='"0123"')
    store.schemas.put("sensor", {}, if_match=first.etag)
    with pytest.raises(PreconditionFailedError):
        store.schemas.delete("sensor", if_match=first.etag)
    store.schemas.delete("sensor")
    with pytest.raises(NotFoundError):
        store.schemas.get("sensor")


def test_import_is_validated(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"), create=True)
    store.schemas.put("default", {"required": ["deviceName"]})
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / f"{MAC}.json").write_text(json.dumps({"deviceName": "ok"}))
    (legacy / f"{OTHER}.json").write_text(json.dumps({"nameless": True}))
    outcomes = [r.outcome.name for r in LegacyDirectory.open(str(legacy)).import_into(store)]
    assert outcomes == ["IMPORTED", "REJECTED"]
    assert [str(s.mac_address) for s in store.list()] == [MAC]


# -- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture
def app(store: ConfigStore) -> webtest.TestApp:
    return webtest.TestApp(create_app(store, Settings()))


def test_http_schema_management(app: webtest.TestApp) -> None:
    stored = app.put_json("/api/schemas/sensor", {"schema": SENSOR})
    assert stored.json == {"name": "sensor", "relaxed": False, "schema": SENSOR}
    assert app.get("/api/schemas").json == {"schemas": ["sensor"]}
    got = app.get("/api/schemas/sensor")
    assert got.headers["ETag"] == stored.headers["ETag"]
    app.put_json("/api/schemas/sensor", {"schema": {}}, headers={"If-Match": '"stale"'}, status=412)
    bad = app.put_json("/api/schemas/sensor", {"schema": {"type": 3}}, status=400)
    assert bad.json["code"] == "INVALID_SCHEMA"
    app.put_json("/api/schemas/sensor", {"schema": SENSOR, "relaxed": "yes"}, status=400)
    app.delete("/api/schemas/sensor", status=204)
    assert app.get("/api/schemas/sensor", status=404).json["details"] == {"schema": "sensor"}


def test_http_violation_is_422_with_pointers(app: webtest.TestApp) -> None:
    app.put_json("/api/schemas/sensor", {"schema": SENSOR})
    answer = app.put_json(f"/api/configs/{MAC}", {"content": {"deviceModel": "sensor"}}, status=422)
    assert answer.json["code"] == "SCHEMA_VIOLATION"
    assert answer.json["details"]["problems"] == [
        {"pointer": "", "message": "'pollSeconds' is a required property"}
    ]
    app.get(f"/api/configs/{MAC}", status=404)


def test_http_dry_run_tells_the_schema_and_its_problems(app: webtest.TestApp) -> None:
    app.put_json("/api/schemas/sensor", {"schema": SENSOR, "relaxed": True})
    answer = app.put_json(
        f"/api/configs/{MAC}?dry_run=true", {"content": {"deviceModel": "sensor"}}
    )
    assert answer.headers["X-Schema"] == "sensor"
    assert answer.headers["X-Schema-Problems"] == "1"
    app.get(f"/api/configs/{MAC}", status=404)


def test_http_report_lists_configs_stored_before_their_schema(app: webtest.TestApp) -> None:
    app.put_json(f"/api/configs/{MAC}", {"content": {"deviceModel": "sensor"}})
    app.put_json(f"/api/configs/{OTHER}", {"content": {"deviceModel": "sensor", "pollSeconds": 9}})
    app.put_json("/api/schemas/sensor", {"schema": SENSOR})
    assert app.get(f"/esp32/config/{MAC}.json").json == {"deviceModel": "sensor"}  # still served
    report = app.get("/api/validation").json
    assert report["checked"] == 2
    assert [v["mac_address"] for v in report["violations"]] == [MAC]
    assert report["violations"][0]["schema"] == "sensor"
