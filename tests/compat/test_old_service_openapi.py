"""Our live OpenAPI document generates the same client as the old service's.

Client generators name functions after operationIds, arguments after parameter names and types
after schema names and titles. For every operation of the old document, ours must keep all of
them, with at least the same fields and compatible types, so code written against a client
generated from the old document compiles against one generated from ours.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .conftest import fetch

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# The old service's framework documented a query-validation 400 with this schema on an operation
# that has no parameters; nothing in our API can fail that way, so it has no counterpart.
FRAMEWORK_ONLY_SCHEMAS = ("ValidationError.",)


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The component key and schema a ``$ref`` points at."""
    key = schema["$ref"].removeprefix("#/components/schemas/")
    return key, document["components"]["schemas"][key]


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a property schema allows, however it spells them."""
    if "anyOf" in schema:
        return set().union(*(_types(member) for member in schema["anyOf"]))
    if "$ref" in schema:
        return {"object"}
    kind = schema.get("type")
    if kind is None:
        return {"string"} if "pattern" in schema else set()
    return {kind} if isinstance(kind, str) else set(kind)


def _assert_same_shape(
    old: dict[str, Any],
    old_ref: dict[str, Any],
    ours: dict[str, Any],
    our_ref: dict[str, Any],
    *,
    request: bool,
) -> None:
    old_key, old_schema = _resolve(old, old_ref)
    our_key, our_schema = _resolve(ours, our_ref)
    assert our_key == old_key
    assert our_schema["title"] == old_schema["title"]
    assert _types(our_schema) == _types(old_schema)
    for name, old_property in old_schema.get("properties", {}).items():
        assert name in our_schema["properties"], (old_key, name)
        our_property = our_schema["properties"][name]
        old_types, our_types = _types(old_property), _types(our_property)
        if request:  # we accept at least what the old service accepted
            assert old_types <= our_types, (old_key, name, old_types, our_types)
        else:  # we answer only what an old client can read
            assert our_types, (old_key, name)
            assert our_types <= old_types, (old_key, name, old_types, our_types)
        if "items" in old_property:
            _assert_same_shape(
                old, old_property["items"], ours, our_property["items"], request=request
            )
    if request:  # a field the old service made optional must not become required
        assert set(our_schema.get("required", ())) <= set(old_schema.get("required", ()))
    else:  # a field old clients could rely on is still always there
        assert set(old_schema.get("required", ())) <= set(our_schema.get("required", ()))


def _json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    schema: dict[str, Any] | None = (
        body.get("content", {}).get("application/json", {}).get("schema")
    )
    return schema


OLD_OPERATIONS = [
    ("/api/configs", "get"),
    ("/api/configs/{mac_address}", "get"),
    ("/api/configs/{mac_address}", "put"),
    ("/api/configs/{mac_address}", "delete"),
    ("/api/health", "get"),
    ("/metrics", "get"),
]


def test_the_copy_of_the_old_document_lists_these_operations(old_document: dict[str, Any]) -> None:
    assert sorted(_operations(old_document)) == sorted(OLD_OPERATIONS)


@pytest.mark.parametrize(("path", "method"), OLD_OPERATIONS)
def test_every_old_operation_is_served_under_the_same_names(
    old_document: dict[str, Any], live_document: dict[str, Any], path: str, method: str
) -> None:
    old = _operations(old_document)[path, method]
    ours = _operations(live_document).get((path, method))
    assert ours is not None, f"{method.upper()} {path} is missing"
    assert ours["operationId"] == old["operationId"]
    old_parameters = {(p["in"], p["name"], p.get("required", False)) for p in old["parameters"]}
    our_parameters = {
        (p["in"], p["name"], p.get("required", False)) for p in ours.get("parameters", ())
    }
    assert old_parameters <= our_parameters
    # Parameters we added are optional headers or query flags (``dry_run``): an old call still
    # passes all that is required.
    for where, _, required in our_parameters - old_parameters:
        assert where in ("header", "query")
        assert not required
    if "requestBody" in old:
        old_schema = _json_schema(old["requestBody"])
        our_schema = _json_schema(ours["requestBody"])
        assert old_schema is not None
        assert our_schema is not None
        _assert_same_shape(old_document, old_schema, live_document, our_schema, request=True)
    for status, answer in old["responses"].items():
        assert status in ours["responses"] or _is_framework_only(answer), (path, method, status)
        old_schema = _json_schema(answer)
        if old_schema is None or _is_framework_only(answer):
            continue
        our_schema = _json_schema(ours["responses"][status])
        assert our_schema is not None, (path, method, status)
        _assert_same_shape(old_document, old_schema, live_document, our_schema, request=False)


def _is_framework_only(answer: dict[str, Any]) -> bool:
    return any(key in str(answer) for key in FRAMEWORK_ONLY_SCHEMAS)


def test_error_body_adds_the_status(live_document: dict[str, Any]) -> None:
    schema = live_document["components"]["schemas"]["ErrorResponseSchema.8c5cd6b"]
    assert schema["properties"]["status"] == {"type": "integer"}
    assert "status" in schema["required"]


def test_no_cors_preflight_operations_are_documented(live_document: dict[str, Any]) -> None:
    for path, item in live_document["paths"].items():
        assert "options" not in item, path


def test_new_operation_ids_follow_the_old_style(
    old_document: dict[str, Any], live_document: dict[str, Any]
) -> None:
    """``<method>__<path with / as _>``, a plain identifier: dots break generated code."""
    old_ids = {operation["operationId"] for operation in _operations(old_document).values()}
    for (path, method), operation in _operations(live_document).items():
        operation_id = operation["operationId"]
        if operation_id in old_ids:
            continue
        assert operation_id.startswith(method + "__"), operation_id
        assert re.fullmatch(r"[a-z]+__[A-Za-z0-9_]+", operation_id), path


def test_the_mac_parameter_keeps_its_old_name_everywhere(live_document: dict[str, Any]) -> None:
    for path in live_document["paths"]:
        assert "{mac}" not in path
    assert "/esp32/config/{mac_address}.json" in live_document["paths"]


def test_document_is_served_at_the_old_and_the_new_address(
    base_url: str, live_document: dict[str, Any]
) -> None:
    status, headers, body = fetch(base_url + "/api/openapi.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == live_document


@pytest.mark.parametrize("page", ["/api/docs", "/api/docs/"])
def test_docs_pages_load_nothing_from_outside(base_url: str, page: str) -> None:
    status, headers, body = fetch(base_url + page)
    if status == 503:
        pytest.skip("swagger-ui-bundle-v2 is not installed: no docs page to check")
    assert status == 200
    assert "text/html" in headers["Content-Type"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for source in re.findall(r'(?:src|href)="([^"]+)"', body.decode()):
        assert "//" not in source, source
        asset_status, _, asset = fetch(base_url + page.rsplit("/", 1)[0] + "/" + source)
        assert asset_status == 200, source
        assert asset, source
    init = fetch(base_url + "/api/docs/assets/init.js")[2].decode()
    assert "validatorUrl: null" in init
