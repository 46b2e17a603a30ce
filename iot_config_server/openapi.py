"""The OpenAPI 3.1 document, derived from the route table and the attrs wire classes.

Schemas come from the same classes (and the same omit/rename constants) that produce the
answers, and operations from `endpoints.ENDPOINTS`, which is also what the app registers: adding a
field or a route changes the document with no second place to edit.
"""

from __future__ import annotations

import json
import threading
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Union

import attrs

from iot_config_core import ConfigSummary, MacAddress, __version__
from iot_config_core.mac import CANONICAL_PATTERN, SPELLINGS_PATTERN
from iot_config_core.wire import SUMMARY_FILE_FIELDS

from .api_models import ERROR_BODY_RENAMES, SCHEMA_NAMES, ErrorBody, SchemaName
from .endpoints import (
    DOCUMENTED_NAMES,
    ENDPOINTS,
    Endpoint,
    Header,
    openapi_path,
    operation_id,
    path_parameters,
)
from .http_errors import ERROR_TABLE, ApiErrorCode, wire_codes

__all__ = ["OpenApiCache", "build_document", "schema_components"]

OPENAPI_VERSION = "3.1.0"
DEVICE_TAG = "devices"
#: Tag order and descriptions (the docs UI shows groups in this order).
TAGS = {
    "configs": "Admin REST API used by the web UI (bearer token when the server has tokens).",
    "schemas": "JSON Schemas that configs are checked against, and the report of violations.",
    "devices": "What device firmware polls: exact stored bytes with ETag revalidation. Open, "
    "unless device auth is on: then the device's own token (or an admin token).",
    "operations": "Health checks and Prometheus metrics. Open.",
    "documentation": "This document and the interactive docs. Open.",
    "history": "Each config's versions: who changed what, diffs, rollback (admin, as configs).",
}
#: The documented name of the MAC path parameter.
MAC_NAME = DOCUMENTED_NAMES["mac"]
MAC_PARAMETER = (
    "MAC address in any common spelling: aa-bb-cc-dd-ee-ff, AA:BB:CC:DD:EE:FF, aabb.ccdd.eeff, "
    "aabbccddeeff"
)


#: Descriptions of path parameters other than the MAC.
PATH_PARAMETERS = {
    MAC_NAME: MAC_PARAMETER,
    "schema": "Schema name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
}


@attrs.frozen
class WireShape:
    """How a class's wire form differs from its attrs fields (mirrors the cattrs hooks)."""

    omit: tuple[str, ...] = ()
    renames: Mapping[str, str] = attrs.field(factory=dict)
    field_schemas: Mapping[str, dict[str, Any]] = attrs.field(factory=dict)


def _shapes() -> dict[type, WireShape]:
    return {
        ConfigSummary: WireShape(omit=SUMMARY_FILE_FIELDS),
        ErrorBody: WireShape(
            renames=ERROR_BODY_RENAMES,
            field_schemas={
                "code": {"type": "string", "enum": wire_codes()},
                "details": {"type": "object", "description": "Facts about the error."},
                "correlation_id": {
                    "type": "string",
                    "description": "The request id (X-Request-ID) to quote in bug reports.",
                },
            },
        ),
    }


class _SchemaBuilder:
    """JSON Schema (2020-12, as OpenAPI 3.1 uses) for the types our wire classes use."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self._shapes = _shapes()

    def ref(self, cls: type, *, output: bool) -> dict[str, Any]:
        name = SCHEMA_NAMES.get(cls) or SchemaName(cls.__name__, cls.__name__)
        if name.key not in self.components:
            self.components[name.key] = {}  # placeholder stops recursion
            self.components[name.key] = {
                "title": name.title,
                **self._object(cls, output=output),
            }
        return {"$ref": f"#/components/schemas/{name.key}"}

    def _object(self, cls: type, *, output: bool) -> dict[str, Any]:
        shape = self._shapes.get(cls, WireShape())
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            if field.name in shape.omit:
                continue
            wire = shape.renames.get(field.name, field.name)
            schema = shape.field_schemas.get(field.name) or self.schema(
                hints[field.name], output=output
            )
            if field.default is not attrs.NOTHING and not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                schema = {**schema, "default": field.default}
            properties[wire] = schema
            # Answers always carry every field; requests may leave out fields with defaults.
            if output or field.default is attrs.NOTHING:
                required.append(wire)
        result: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
        if cls.__doc__:
            result["description"] = cls.__doc__.strip().splitlines()[0]
        if output:
            result["additionalProperties"] = False
        return result

    def schema(self, tp: Any, *, output: bool) -> dict[str, Any]:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        simple: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
        if tp is Any:
            return {}
        if tp is type(None):
            return {"type": "null"}
        if tp in simple:
            return {"type": simple[tp]}
        if tp is MacAddress:
            return {
                "type": "string",
                "pattern": CANONICAL_PATTERN,
                "description": "MAC address, canonical spelling",
                "examples": ["aa-bb-cc-dd-ee-ff"],
            }
        if tp is datetime:
            return {"type": "string", "format": "date-time"}
        if origin in (Union, types.UnionType):
            members = [self.schema(arg, output=output) for arg in args]
            if all(set(m) == {"type"} and isinstance(m["type"], str) for m in members):
                return {"type": [m["type"] for m in members]}
            return {"anyOf": members}
        if origin is Literal:
            return {"enum": list(args)} if len(args) > 1 else {"const": args[0]}
        if origin in (list, tuple):
            item = args[0] if args else Any
            return {"type": "array", "items": self.schema(item, output=output)}
        if origin is dict or tp is dict:
            value = args[1] if len(args) == 2 else Any
            # `true`, not absent, for any value: generators read a bare object as "no keys".
            return {
                "type": "object",
                "additionalProperties": self.schema(value, output=output) or True,
            }
        if attrs.has(tp):
            return self.ref(tp, output=output)
        raise TypeError(f"no JSON schema for {tp!r}")


def _header_objects(headers: tuple[Header, ...]) -> dict[str, Any]:
    return {h.name: {"description": h.description, "schema": {"type": "string"}} for h in headers}


_REQUEST_ID = Header("X-Request-ID", "The request id (the client's if sane, else generated).")


def _error_responses(endpoint: Endpoint, builder: _SchemaBuilder) -> dict[str, Any]:
    codes = list(endpoint.errors)
    if endpoint.admin or endpoint.tag == DEVICE_TAG:
        codes.append(ApiErrorCode.UNAUTHORIZED)
    codes.append(ApiErrorCode.INTERNAL_ERROR)
    by_status: dict[int, set[str]] = {}
    headers_by_status: dict[int, dict[str, Any]] = {}
    for code in codes:
        entry = ERROR_TABLE[code]
        by_status.setdefault(entry.status, set()).add(entry.wire_code)
        headers = headers_by_status.setdefault(entry.status, _header_objects((_REQUEST_ID,)))
        for name, value in entry.headers:
            headers[name] = {"schema": {"type": "string", "examples": [value]}}
    ref = builder.ref(ErrorBody, output=True)
    responses: dict[str, Any] = {}
    for status, wire in sorted(by_status.items()):
        headers = headers_by_status[status]
        responses[str(status)] = {
            "description": "Error: " + ", ".join(sorted(wire)),
            "headers": headers,
            "content": {"application/json": {"schema": ref}},
        }
    return responses


def _operation(endpoint: Endpoint, builder: _SchemaBuilder) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": SPELLINGS_PATTERN}
            if name == MAC_NAME
            else {"type": "string"},
            "description": PATH_PARAMETERS.get(name, "File name"),
        }
        for name in path_parameters(endpoint.rule)
    ]
    parameters.extend(
        {
            "name": header.name,
            "in": "header",
            "required": header.required,
            "schema": {"type": "string"},
            "description": header.description,
        }
        for header in endpoint.request_headers
    )
    parameters.extend(
        {
            "name": parameter.name,
            "in": "query",
            "required": False,
            "schema": parameter.schema,
            "description": parameter.description,
        }
        for parameter in endpoint.query_parameters
    )
    responses: dict[str, Any] = {}
    for reply in endpoint.replies:
        answer: dict[str, Any] = {
            "description": reply.description,
            "headers": _header_objects((*reply.headers, _REQUEST_ID)),
        }
        if reply.model is not None:
            answer["content"] = {
                "application/json": {"schema": builder.ref(reply.model, output=True)}
            }
        elif reply.media_type is not None:
            schema: dict[str, Any] = (
                {"type": "object"} if reply.media_type == "application/json" else {"type": "string"}
            )
            answer["content"] = {reply.media_type: {"schema": schema}}
        responses[str(reply.status)] = answer
    responses.update(_error_responses(endpoint, builder))
    operation: dict[str, Any] = {
        "operationId": operation_id(endpoint),
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "responses": responses,
    }
    if endpoint.description:
        operation["description"] = endpoint.description
    if parameters:
        operation["parameters"] = parameters
    if endpoint.request_model is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": builder.ref(endpoint.request_model, output=False)}
            },
        }
    if endpoint.request_bodies:
        operation["requestBody"] = {
            "required": True,
            "content": {
                media_type: {"schema": dict(schema)}
                for media_type, schema in endpoint.request_bodies.items()
            },
        }
    if endpoint.admin:
        # Required only when the server is configured with admin tokens.
        operation["security"] = [{"adminToken": []}, {}]
    elif endpoint.tag == DEVICE_TAG:
        # Required only with IOT_CONFIG_DEVICE_AUTH=required (optional: used when sent).
        operation["security"] = [
            {"deviceToken": []},
            {"deviceTokenQuery": []},
            {"adminToken": []},
            {},
        ]
    return operation


def build_document(base_path: str = "/") -> dict[str, Any]:
    """The whole OpenAPI document for an app whose routes start at ``base_path``."""
    builder = _SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        path = paths.setdefault(openapi_path(endpoint.rule), {})
        path[endpoint.method.lower()] = _operation(endpoint, builder)
    # CORS preflight OPTIONS routes are protocol, not API: undocumented.
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "iot-config",
            "version": __version__,
            "description": (
                "Configs of ESP32 devices, keyed by MAC address. Devices poll the raw document "
                "endpoints; admins and the web UI use /api/configs. Every error answer is an "
                "ErrorBody with a stable machine code."
            ),
        },
        "servers": [{"url": base_path}],
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(builder.components.items())),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Admin token; required only when the server has tokens set.",
                },
                "deviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The device's own token (`iot-config device-token MAC`); "
                    "required only with IOT_CONFIG_DEVICE_AUTH=required. Without a valid one, "
                    "existing and absent MACs get the same 401.",
                },
                "deviceTokenQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "access_token",
                    "description": "The device token as a query parameter, for HTTP clients "
                    "that cannot set headers (prefer the header: proxies log query strings).",
                },
            },
        },
    }


def schema_components() -> dict[str, dict[str, Any]]:
    """The component schemas alone (tests validate real answers against them)."""
    return build_document()["components"]["schemas"]  # type: ignore[no-any-return]


class OpenApiCache:
    """The serialized document per base path, built on first request (a handful of prefixes)."""

    def __init__(self) -> None:
        self._documents: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def document(self, base_path: str) -> bytes:
        """The serialized document for ``base_path``."""
        found = self._documents.get(base_path)
        if found is None:
            found = json.dumps(build_document(base_path), ensure_ascii=False).encode()
            with self._lock:
                if len(self._documents) >= 16:
                    self._documents.clear()
                self._documents[base_path] = found
        return found
