"""The OpenAPI document: valid 3.1, exactly the app's routes, and real answers match its schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import webtest
from openapi_spec_validator import validate

from iot_config_core import ConfigStore, ConfigSummary, MacAddress, open_store
from iot_config_core.mac import CANONICAL_PATTERN
from iot_config_core.wire import ConfigListWire, ConfigWire
from iot_config_server import Settings, create_app
from iot_config_server.api_models import (
    SCHEMA_NAMES,
    ErrorBody,
    HealthyReport,
    UnhealthyReport,
)
from iot_config_server.endpoints import ENDPOINTS
from iot_config_server.http_errors import ERROR_TABLE, ApiErrorCode

MAC = "aa-bb-cc-dd-ee-ff"
ERROR_BODY = SCHEMA_NAMES[ErrorBody].key


@pytest.fixture
def document(app: webtest.TestApp) -> dict[str, Any]:
    response = app.get("/api/openapi.json")
    assert response.content_type == "application/json"
    result: dict[str, Any] = response.json
    return result


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def _bottle_to_openapi(rule: str) -> str:
    return re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", rule).replace("{mac}", "{mac_address}")


def test_documents_exactly_the_routes_the_app_serves(
    store: ConfigStore, document: dict[str, Any]
) -> None:
    """Every route but the CORS preflight OPTIONS ones, which are protocol, not API."""
    served = {
        (_bottle_to_openapi(route.rule), route.method.lower())
        for route in create_app(store, Settings()).routes
        if route.method != "OPTIONS"
    }
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    assert documented == served
    assert ("/api/configs/{mac_address}", "put") in served
    assert ("/esp32/config/{mac_address}.json", "get") in served


def test_operation_ids_are_unique_identifiers_but_the_old_services(
    document: dict[str, Any],
) -> None:
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    legacy = {endpoint.legacy_operation_id for endpoint in ENDPOINTS} - {""}
    assert legacy == {f"{m}__api_configs_{{mac_address}}" for m in ("get", "put", "delete")}
    for operation_id in set(ids) - legacy:
        assert re.fullmatch(r"[a-z]+__[A-Za-z0-9_]+", operation_id), operation_id
    assert "get__esp32_config_mac_address_json" in ids
    assert "get__api_health" in ids


def test_error_headers_come_from_the_error_table(
    store: ConfigStore, document: dict[str, Any]
) -> None:
    """WWW-Authenticate and Retry-After are documented and sent from the same table entry."""
    for code, rule in ERROR_TABLE.items():
        for name, value in rule.headers:
            documented = [
                answer["headers"][name]["schema"]["examples"]
                for operations in document["paths"].values()
                for operation in operations.values()
                for status, answer in operation["responses"].items()
                if status == str(rule.status) and name in answer.get("headers", {})
            ]
            assert documented, (code, name)
            assert all(examples == [value] for examples in documented)
    secured = webtest.TestApp(create_app(store, Settings(admin_tokens=("t0ken-" * 6,))))
    challenge = dict(ERROR_TABLE[ApiErrorCode.UNAUTHORIZED].headers)["WWW-Authenticate"]
    assert secured.get("/api/configs", status=401).headers["WWW-Authenticate"] == challenge


def test_every_operation_documents_errors_with_the_error_body(document: dict[str, Any]) -> None:
    statuses = {entry.status for entry in ERROR_TABLE.values()}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (path, method)
            if method == "options":
                continue
            assert "500" in operation["responses"], (path, method)
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and ERROR_BODY in str(answer):
                    assert int(status) in statuses
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{ERROR_BODY}"}


def test_admin_operations_declare_the_bearer_scheme(document: dict[str, Any]) -> None:
    config = document["paths"]["/api/configs/{mac_address}"]
    for method in ("get", "put", "delete"):
        assert {"adminToken": []} in config[method]["security"]
        assert "401" in config[method]["responses"]
    assert document["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"


def test_device_operations_declare_the_device_token_schemes(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["deviceToken"]["scheme"] == "bearer"
    assert (schemes["deviceTokenQuery"]["in"], schemes["deviceTokenQuery"]["name"]) == (
        "query",
        "access_token",
    )
    for path in ("/esp32/config/{mac_address}.json", "/api/configs/{mac_address}.json"):
        device = document["paths"][path]["get"]
        # Any one of: the device's token (header or query), an admin token, or none (mode off).
        assert device["security"] == [
            {"deviceToken": []},
            {"deviceTokenQuery": []},
            {"adminToken": []},
            {},
        ]
        assert "WWW-Authenticate" in device["responses"]["401"]["headers"]


def test_error_codes_in_the_schema_are_the_tables(document: dict[str, Any]) -> None:
    codes = document["components"]["schemas"][ERROR_BODY]["properties"]["code"]["enum"]
    assert set(codes) == {entry.wire_code for entry in ERROR_TABLE.values()}
    assert {"RECORD_NOT_FOUND", "INVALID_OPERATION", "PRECONDITION_FAILED"} <= set(codes)


def test_put_request_body_schema(document: dict[str, Any]) -> None:
    put = document["paths"]["/api/configs/{mac_address}"]["put"]
    ref = put["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["required"] == ["content"]
    assert schema["properties"]["allow_overwrite"] == {"type": "boolean", "default": True}
    assert schema["properties"]["content"]["type"] == "object"
    headers = {p["name"] for p in put["parameters"] if p["in"] == "header"}
    assert headers == {"If-Match", "If-None-Match"}


def test_summary_schema_omits_file_metadata(document: dict[str, Any]) -> None:
    summary = document["components"]["schemas"][SCHEMA_NAMES[ConfigSummary].key]
    assert set(summary["properties"]) == {
        "mac_address",
        "device_name",
        "device_entity_id",
        "enable_ota",
    }
    assert summary["properties"]["device_name"] == {"type": ["string", "null"]}


def _validator(document: dict[str, Any], cls: type) -> jsonschema.Draft202012Validator:
    """A validator for the component schema of ``cls``, resolving refs inside the document."""
    name = SCHEMA_NAMES[cls].key if cls in SCHEMA_NAMES else cls.__name__
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_real_answers_match_their_schemas(app: webtest.TestApp, document: dict[str, Any]) -> None:
    put = app.put_json(
        f"/api/configs/{MAC}",
        {"content": {"deviceName": "k", "enableOTA": True, "nested": {"a": [1, 2.5, None]}}},
    )
    _validator(document, ConfigWire).validate(put.json)
    _validator(document, ConfigWire).validate(app.get(f"/api/configs/{MAC}").json)
    app.put_json("/api/configs/00:11:22:33:44:55", {"content": {"deviceName": 3}})
    _validator(document, ConfigListWire).validate(app.get("/api/configs").json)
    _validator(document, HealthyReport).validate(app.get("/api/health").json)
    errors = [
        app.get("/api/configs/zz", status=400),
        app.get("/api/configs/00-00-00-00-00-09", status=404),
        app.get("/nope", status=404),
        app.post("/api/configs", status=405),
        app.put(
            f"/api/configs/{MAC}", b"[]", headers={"Content-Type": "application/json"}, status=400
        ),
        app.put_json(
            f"/api/configs/{MAC}", {"content": {}}, headers={"If-Match": '"x"'}, status=412
        ),
    ]
    for error in errors:
        _validator(document, ErrorBody).validate(error.json)


def test_unhealthy_answer_matches_its_schema(tmp_path: Path) -> None:
    app = webtest.TestApp(create_app(open_store(str(tmp_path / "absent")), Settings()))
    document = app.get("/api/openapi.json").json
    _validator(document, UnhealthyReport).validate(app.get("/api/health", status=503).json)


def test_schema_rejects_drifted_answers(document: dict[str, Any]) -> None:
    """The schemas are strict enough to notice a renamed or extra field."""
    good = {"error": "x", "code": "NOT_FOUND", "status": 404, "details": {}, "correlationId": "r"}
    _validator(document, ErrorBody).validate(good)
    for bad in (
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "details"},
        {k: v for k, v in good.items() if k != "status"},
        {**good, "code": "NOT_A_CODE"},
        {**good, "status": "404"},
        {"error": "x", "code": "NOT_FOUND", "status": 404, "details": {}, "correlation_id": "r"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            _validator(document, ErrorBody).validate(bad)


def test_docs_page_is_self_hosted(app: webtest.TestApp) -> None:
    page = app.get("/api/docs")
    assert page.content_type == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "<script>" not in page.text  # no inline script
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources
    for source in sources:
        assert "://" not in source
        assert not source.startswith("//")
        asset = app.get("/api/" + source)
        assert asset.body
    assert "openapi.json" in app.get("/api/docs/assets/init.js").text
    assert app.get("/api/docs/assets/swagger-ui-bundle.js").content_type == "text/javascript"
    missing = app.get("/api/docs/assets/..%2F..%2F__init__.py", status=404)
    assert missing.json["code"] == "NOT_FOUND"
    assert app.get("/api/docs/assets/index.html", status=404).json["code"] == "NOT_FOUND"


def test_every_operation_has_a_declared_tag(document: dict[str, Any]) -> None:
    declared = [tag["name"] for tag in document["tags"]]
    used = {
        tag
        for operations in document["paths"].values()
        for operation in operations.values()
        for tag in operation["tags"]
    }
    assert used == set(declared)
    assert declared[0] == "configs"


@pytest.mark.parametrize("page", ["/api/docs", "/api/docs/"])
def test_docs_page_works_with_and_without_trailing_slash(app: webtest.TestApp, page: str) -> None:
    """Every relative URL of either page resolves to a served file; nothing leaves the origin."""
    html = app.get(page)
    base = page.rsplit("/", 1)[0] + "/"
    for source in re.findall(r'(?:src|href)="([^"]+)"', html.text):
        assert "://" not in source
        assert app.get(base + source).body
    # Swagger UI fetches "openapi.json" relative to the page: both resolve to the document.
    assert app.get(base + "openapi.json").json == app.get("/api/openapi.json").json


def test_swagger_ui_never_asks_an_outside_validator(app: webtest.TestApp) -> None:
    assert "validatorUrl: null" in app.get("/api/docs/assets/init.js").text


def test_wire_macs_are_documented_with_the_cores_canonical_pattern(
    document: dict[str, Any],
) -> None:
    summary = document["components"]["schemas"][SCHEMA_NAMES[ConfigSummary].key]
    assert summary["properties"]["mac_address"]["pattern"] == CANONICAL_PATTERN
    for value in (0, 1, 0xAABBCCDDEEFF, (1 << 48) - 1):
        assert re.fullmatch(CANONICAL_PATTERN, str(MacAddress(value)))
    assert not re.fullmatch(CANONICAL_PATTERN, "AA-BB-CC-DD-EE-FF")
