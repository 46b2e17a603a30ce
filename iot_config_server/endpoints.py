"""The route table as data: what `create_app` registers and what `openapi` documents.

Both read this one tuple, so the served routes and the documented ones are the same list. Nothing
here imports bottle: the table is also the contract the tests compare the app against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from iot_config_core import ErrorCode
from iot_config_core.query import MAX_FILTER_LENGTH, MAX_LIMIT
from iot_config_core.schemas import SchemaReport
from iot_config_core.wire import ConfigListWire, ConfigWire

from .api_models import HealthyReport, PutConfigRequest, UnhealthyReport
from .history_api import HistoryWire, RollbackRequest
from .http_errors import ApiErrorCode, Code
from .schema_api import PutSchemaRequest, SchemaListWire, SchemaWire

__all__ = [
    "ENDPOINTS",
    "Endpoint",
    "Header",
    "QueryParameter",
    "Reply",
    "allowed_methods",
    "openapi_path",
    "operation_id",
    "rules",
]


@attrs.frozen
class Header:
    """A documented request or response header."""

    name: str
    description: str
    required: bool = False


@attrs.frozen
class QueryParameter:
    """A documented query parameter; ``schema`` is its JSON Schema."""

    name: str
    description: str
    schema: dict[str, object] = attrs.field(factory=lambda: {"type": "string"}, hash=False)


@attrs.frozen
class Reply:
    """One documented success answer of an endpoint."""

    status: int
    description: str
    #: An attrs class whose wire form is the JSON body, or None for the raw/none cases below.
    model: type | None = None
    #: Media type of a body that is not an attrs model (raw documents, metrics, HTML, assets).
    media_type: str | None = None
    headers: tuple[Header, ...] = ()


ETAG = Header("ETag", "Strong entity tag of the stored bytes (quoted MD5 hex).")
CACHE_CONTROL = Header("Cache-Control", "`no-cache`: devices revalidate with If-None-Match.")
IF_MATCH = Header("If-Match", "Write only if the stored version matches (`*`: if any exists).")
IF_NONE_MATCH_WRITE = Header("If-None-Match", "`*`: write only if no config is stored yet.")
IF_NONE_MATCH_READ = Header(
    "If-None-Match", "ETag list from an earlier answer; a match (weak comparison) answers 304."
)


LIST_ETAG = Header(
    "ETag", "Strong entity tag of this answer's body: the same fleet has the same tag anywhere."
)
NEXT_LINK = Header(
    "Link", 'The next page, as `<URL>; rel="next"`; absent on the last page or without `limit`.'
)
LIST_QUERY = (
    QueryParameter(
        "limit",
        f"At most this many configs (1 to {MAX_LIMIT}); the Link header leads to the next page.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    ),
    QueryParameter(
        "cursor", "Where the page starts: the `cursor` of the previous answer's Link header."
    ),
    QueryParameter(
        "name",
        "Only configs whose device_name contains this text (case-insensitive).",
        {"type": "string", "maxLength": MAX_FILTER_LENGTH},
    ),
    QueryParameter(
        "entity_id",
        "Only configs whose device_entity_id contains this text (case-insensitive).",
        {"type": "string", "maxLength": MAX_FILTER_LENGTH},
    ),
    QueryParameter(
        "enable_ota",
        "Only configs whose enable_ota is this value.",
        {"type": "boolean"},
    ),
)


@attrs.frozen
class Endpoint:
    """One route: method, Bottle rule, the handler's name and everything the docs say about it."""

    name: str
    method: str
    rule: str
    summary: str
    tag: str
    replies: tuple[Reply, ...]
    #: Error codes (keys of `http_errors.ERROR_TABLE`) this route can answer with.
    errors: tuple[Code, ...] = ()
    #: What the route does, as error messages say it: "Cannot <action> because ...".
    action: str = ""
    #: Whether configured admin tokens are required (device, health, metrics and docs are open).
    admin: bool = False
    request_model: type | None = None
    request_headers: tuple[Header, ...] = ()
    query_parameters: tuple[QueryParameter, ...] = ()
    description: str = ""
    #: The operationId when it is not the one `operation_id` derives: the old service's names,
    #: braces and all, which generated clients call.
    legacy_operation_id: str = ""
    #: Request bodies that are not an attrs model: media type -> JSON Schema of the body.
    request_bodies: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)

    @property
    def template(self) -> str:
        """The rule without filters (``/api/configs/<mac>``): the metrics route label."""
        return _FILTER.sub(r"<\1>", self.rule)


_FILTER = re.compile(r"<(\w+):[^>]*>")
# Canonical MACs never end in ".json", so "/api/configs/<mac>.json" and this rule are disjoint: a
# PUT to the raw path is a 405 naming GET, not an "invalid MAC" 400. An inline "re" filter (not a
# custom one) so the rule also works when Bottle merges the app's routes into a parent app.
MAC_RULE = r"/api/configs/<mac:re:[^/]+(?<!\.json)>"

_MAC_ERRORS: tuple[Code, ...] = (
    ErrorCode.INVALID_MAC,
    ErrorCode.NOT_FOUND,
    ErrorCode.STORE_UNAVAILABLE,
    ApiErrorCode.STORE_BUSY,
)
_RAW_REPLIES = (
    Reply(
        200,
        "The stored document, byte for byte.",
        media_type="application/json",
        headers=(ETAG, CACHE_CONTROL),
    ),
    Reply(304, "Not modified: the If-None-Match tag is current.", headers=(ETAG, CACHE_CONTROL)),
)
_STORED_ERRORS = (ErrorCode.CORRUPT_DOCUMENT, ErrorCode.STORED_DOCUMENT_TOO_LARGE)
DRY_RUN = QueryParameter(
    "dry_run",
    "`true`: check everything (preconditions, document rules, schema) and answer what would be "
    "stored, writing nothing (the answer then has `X-Dry-Run: true` and no ETag).",
    {"type": "boolean", "default": False},
)
#: Headers of a dry run's answer (which has no ETag: nothing with that tag is stored).
DRY_RUN_HEADERS = (
    Header("X-Dry-Run", "`true`: nothing was written; the body is what would be stored."),
    Header("X-Schema", "Dry runs: the name of the schema the config was checked against."),
    Header("X-Schema-Problems", "Dry runs: how many problems it found (relaxed schemas)."),
)
_WRITE_ERRORS: tuple[Code, ...] = (
    ErrorCode.INVALID_MAC,
    ApiErrorCode.INVALID_BODY,
    ErrorCode.INVALID_DOCUMENT,
    ApiErrorCode.INVALID_HEADER,
    ErrorCode.PRECONDITION_FAILED,
    ApiErrorCode.PAYLOAD_TOO_LARGE,
    ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.STORE_UNAVAILABLE,
    ApiErrorCode.STORE_BUSY,
    ErrorCode.UNSUPPORTED_STORE,
    ErrorCode.SCHEMA_VIOLATION,
    ErrorCode.INVALID_SCHEMA,
)
_WRITE_REPLY = Reply(
    200,
    "What was stored (or would be, on a dry run).",
    ConfigWire,
    headers=(ETAG, *DRY_RUN_HEADERS),
)
_JSON_VALUE: Mapping[str, Any] = {}
#: RFC 6902 operations, as the OpenAPI document describes a JSON Patch body.
JSON_PATCH_SCHEMA: Mapping[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["op", "path"],
        "properties": {
            "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
            "path": {"type": "string", "description": "JSON pointer (RFC 6901)"},
            "from": {"type": "string", "description": "JSON pointer, for move and copy"},
            "value": _JSON_VALUE,
        },
    },
}
_RAW_ERRORS = (*_MAC_ERRORS, *_STORED_ERRORS, ApiErrorCode.INVALID_HEADER)

SCHEMA_RULE = "/api/schemas/<schema>"
_SCHEMA_ERRORS: tuple[Code, ...] = (
    ErrorCode.INVALID_SCHEMA,
    ErrorCode.NOT_FOUND,
    ErrorCode.STORE_UNAVAILABLE,
    ApiErrorCode.STORE_BUSY,
)

#: Every route of the app except the generated OPTIONS (CORS preflight) routes.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "list_configs",
        "GET",
        "/api/configs",
        "List every valid config's summary, sorted by MAC address",
        "configs",
        (
            Reply(
                200,
                "The fleet, or the page and filters asked for; `count` is the number of configs "
                "in this answer.",
                ConfigListWire,
                headers=(LIST_ETAG, CACHE_CONTROL, NEXT_LINK),
            ),
            Reply(304, "Not modified: the If-None-Match tag is current.", headers=(LIST_ETAG,)),
        ),
        errors=(
            ErrorCode.INVALID_QUERY,
            ApiErrorCode.INVALID_HEADER,
            ErrorCode.STORE_UNAVAILABLE,
            ApiErrorCode.STORE_BUSY,
        ),
        action="list configs",
        admin=True,
        request_headers=(IF_NONE_MATCH_READ,),
        query_parameters=LIST_QUERY,
        description=(
            "Without parameters the whole fleet, as the old service answered. `limit` pages the "
            'answer in MAC order: while more configs follow, the `Link` header (rel="next") '
            "gives the next page's URL, whose `cursor` names the last MAC shown, so a config "
            "stored while the pages are walked is never skipped or repeated. Filters combine "
            "with AND. An unchanged answer keeps its ETag (on every replica): poll with "
            "If-None-Match and get 304."
        ),
    ),
    Endpoint(
        "raw_config",
        "GET",
        "/api/configs/<mac>.json",
        "The stored document of one device, exactly as stored",
        "devices",
        _RAW_REPLIES,
        errors=_RAW_ERRORS,
        action="get config",
        request_headers=(IF_NONE_MATCH_READ,),
    ),
    Endpoint(
        "get_config",
        "GET",
        MAC_RULE,
        "One config with its summary fields",
        "configs",
        (Reply(200, "The config.", ConfigWire, headers=(ETAG,)),),
        errors=(*_MAC_ERRORS, *_STORED_ERRORS),
        action="get config",
        admin=True,
        legacy_operation_id="get__api_configs_{mac_address}",
    ),
    Endpoint(
        "put_config",
        "PUT",
        MAC_RULE,
        "Create or replace a config",
        "configs",
        (_WRITE_REPLY,),
        errors=(*_WRITE_ERRORS, ErrorCode.ALREADY_EXISTS),
        action="save config",
        admin=True,
        request_model=PutConfigRequest,
        request_headers=(IF_MATCH, IF_NONE_MATCH_WRITE),
        description="`allow_overwrite: false` refuses to replace an existing config (409).",
        legacy_operation_id="put__api_configs_{mac_address}",
        query_parameters=(DRY_RUN,),
    ),
    Endpoint(
        "patch_config",
        "PATCH",
        MAC_RULE,
        "Change part of a config (JSON merge patch or JSON Patch)",
        "configs",
        (_WRITE_REPLY,),
        errors=(
            *_WRITE_ERRORS,
            ErrorCode.NOT_FOUND,
            ErrorCode.INVALID_PATCH,
            ErrorCode.PATCH_CONFLICT,
            *_STORED_ERRORS,
        ),
        action="patch config",
        admin=True,
        request_headers=(IF_MATCH,),
        description=(
            "`application/merge-patch+json` (RFC 7396) sets keys, `null` removes one; "
            "`application/json-patch+json` (RFC 6902) edits array items and can `test` values "
            "first. Without If-Match the patch is applied to the current version under "
            "compare-and-swap, so concurrent patches of different keys all land."
        ),
        request_bodies={
            "application/merge-patch+json": {"type": "object"},
            "application/json-patch+json": JSON_PATCH_SCHEMA,
        },
        query_parameters=(DRY_RUN,),
    ),
    Endpoint(
        "delete_config",
        "DELETE",
        MAC_RULE,
        "Delete a config",
        "configs",
        (Reply(204, "Deleted."),),
        errors=(
            *_MAC_ERRORS,
            ApiErrorCode.INVALID_HEADER,
            ErrorCode.PRECONDITION_FAILED,
            ErrorCode.UNSUPPORTED_STORE,
        ),
        action="delete config",
        admin=True,
        request_headers=(IF_MATCH,),
        legacy_operation_id="delete__api_configs_{mac_address}",
    ),
    Endpoint(
        "list_schemas",
        "GET",
        "/api/schemas",
        "The names of the stored JSON Schemas",
        "schemas",
        (Reply(200, "The names.", SchemaListWire),),
        errors=(ErrorCode.STORE_UNAVAILABLE, ApiErrorCode.STORE_BUSY, ErrorCode.UNSUPPORTED_STORE),
        action="list schemas",
        admin=True,
    ),
    Endpoint(
        "get_schema",
        "GET",
        SCHEMA_RULE,
        "One stored JSON Schema",
        "schemas",
        (Reply(200, "The schema.", SchemaWire, headers=(ETAG,)),),
        errors=_SCHEMA_ERRORS,
        action="get schema",
        admin=True,
    ),
    Endpoint(
        "put_schema",
        "PUT",
        SCHEMA_RULE,
        "Create or replace a JSON Schema (checked against the draft-07 meta-schema first)",
        "schemas",
        (Reply(200, "What was stored.", SchemaWire, headers=(ETAG,)),),
        errors=(
            *_SCHEMA_ERRORS,
            ApiErrorCode.INVALID_BODY,
            ErrorCode.INVALID_DOCUMENT,
            ApiErrorCode.INVALID_HEADER,
            ErrorCode.PRECONDITION_FAILED,
            ApiErrorCode.PAYLOAD_TOO_LARGE,
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
        ),
        action="save schema",
        admin=True,
        request_model=PutSchemaRequest,
        request_headers=(IF_MATCH,),
        description=(
            "A config is checked against the schema its `deviceModel` names, else the schema "
            "named `default`, else none. Every later PUT and PATCH of a config is checked; "
            "configs already stored keep being served (`GET /api/validation` lists them). "
            "`relaxed: true` only reports problems: in that report, the server log and a dry "
            "run's `X-Schema-Problems` header."
        ),
    ),
    Endpoint(
        "delete_schema",
        "DELETE",
        SCHEMA_RULE,
        "Delete a JSON Schema",
        "schemas",
        (Reply(204, "Deleted."),),
        errors=(*_SCHEMA_ERRORS, ApiErrorCode.INVALID_HEADER, ErrorCode.PRECONDITION_FAILED),
        action="delete schema",
        admin=True,
        request_headers=(IF_MATCH,),
    ),
    Endpoint(
        "validation_report",
        "GET",
        "/api/validation",
        "Which stored configs violate which schema (relaxed schemas included)",
        "schemas",
        (Reply(200, "The report.", SchemaReport),),
        errors=(ErrorCode.STORE_UNAVAILABLE, ApiErrorCode.STORE_BUSY, ErrorCode.INVALID_SCHEMA),
        action="validate configs",
        admin=True,
    ),
    Endpoint(
        "device_config",
        "GET",
        "/esp32/config/<mac>.json",
        "The stored document of one device (the path device firmware polls)",
        "devices",
        _RAW_REPLIES,
        errors=_RAW_ERRORS,
        action="get config",
        request_headers=(IF_NONE_MATCH_READ,),
    ),
    Endpoint(
        "health",
        "GET",
        "/api/health",
        "Store health: readable and writable",
        "operations",
        (
            Reply(200, "The store works.", HealthyReport),
            Reply(503, "The store fails.", UnhealthyReport),
        ),
    ),
    Endpoint(
        "health_live",
        "GET",
        "/api/health/live",
        "Liveness: the process answers (never touches the store)",
        "operations",
        (Reply(200, "Alive.", HealthyReport),),
    ),
    Endpoint(
        "health_ready",
        "GET",
        "/api/health/ready",
        "Readiness: the store works",
        "operations",
        (
            Reply(200, "Ready.", HealthyReport),
            Reply(503, "Not ready.", UnhealthyReport),
        ),
    ),
    Endpoint(
        "metrics",
        "GET",
        "/metrics",
        "Prometheus metrics",
        "operations",
        (Reply(200, "Prometheus text exposition format.", media_type="text/plain"),),
    ),
    Endpoint(
        "openapi",
        "GET",
        "/api/openapi.json",
        "This OpenAPI document",
        "documentation",
        (Reply(200, "OpenAPI 3.1 document.", media_type="application/json"),),
    ),
    Endpoint(
        "docs",
        "GET",
        "/api/docs",
        "Interactive API documentation",
        "documentation",
        (Reply(200, "HTML page.", media_type="text/html"),),
        errors=(ApiErrorCode.DOCS_UNAVAILABLE,),
    ),
    Endpoint(
        "docs_slash",
        "GET",
        "/api/docs/",
        "Interactive API documentation (the old service's address)",
        "documentation",
        (Reply(200, "HTML page.", media_type="text/html"),),
        errors=(ApiErrorCode.DOCS_UNAVAILABLE,),
    ),
    Endpoint(
        "openapi_at_docs",
        "GET",
        "/api/docs/openapi.json",
        "This OpenAPI document (the old service's address, where generator scripts fetch it)",
        "documentation",
        (Reply(200, "OpenAPI 3.1 document.", media_type="application/json"),),
    ),
    Endpoint(
        "docs_asset",
        "GET",
        "/api/docs/assets/<name>",
        "Static files of the documentation page",
        "documentation",
        (Reply(200, "The file.", media_type="application/octet-stream"),),
        errors=(ApiErrorCode.ROUTE_NOT_FOUND, ApiErrorCode.DOCS_UNAVAILABLE),
    ),
    Endpoint(
        "config_history",
        "GET",
        "/api/configs/<mac>/history",
        "The versions of one config, newest first: who changed what, when, through what",
        "history",
        (Reply(200, "The history (a deleted config keeps its own).", HistoryWire),),
        errors=_MAC_ERRORS,
        action="get history",
        admin=True,
        description="At most the store's `limit` versions per device are kept. A change made "
        "outside the store (a hand edit) shows as source `external`.",
    ),
    Endpoint(
        "config_version",
        "GET",
        "/api/configs/<mac>/history/<etag>",
        "One version of a config from its history, in the config shape",
        "history",
        (Reply(200, "That version.", ConfigWire, headers=(ETAG,)),),
        errors=(*_MAC_ERRORS, ErrorCode.VERSION_NOT_FOUND, *_STORED_ERRORS),
        action="get version",
        admin=True,
    ),
    Endpoint(
        "config_diff",
        "GET",
        "/api/configs/<mac>/diff",
        "What changed between two versions, as an RFC 6902 JSON Patch",
        "history",
        (
            Reply(
                200,
                "The JSON Patch turning version `from` into version `to`.",
                media_type="application/json-patch+json",
            ),
        ),
        errors=(
            *_MAC_ERRORS,
            ErrorCode.VERSION_NOT_FOUND,
            *_STORED_ERRORS,
            ApiErrorCode.BAD_REQUEST,
        ),
        action="diff versions",
        admin=True,
        description="Query: `from` (an ETag from the history, required) and `to` (default: the "
        "current config).",
    ),
    Endpoint(
        "rollback_config",
        "POST",
        "/api/configs/<mac>/rollback",
        "Write an earlier version again, as a new version (also restores a deleted config)",
        "history",
        (Reply(200, "The config now stored.", ConfigWire, headers=(ETAG,)),),
        errors=(
            *_MAC_ERRORS,
            ErrorCode.VERSION_NOT_FOUND,
            *_STORED_ERRORS,
            ApiErrorCode.INVALID_BODY,
            ApiErrorCode.INVALID_HEADER,
            ErrorCode.INVALID_DOCUMENT,
            ErrorCode.SCHEMA_VIOLATION,
            ErrorCode.PRECONDITION_FAILED,
            ApiErrorCode.PAYLOAD_TOO_LARGE,
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            ErrorCode.UNSUPPORTED_STORE,
        ),
        action="roll back config",
        admin=True,
        request_model=RollbackRequest,
        request_headers=(IF_MATCH,),
    ),
)

_PARAM = re.compile(r"<(\w+)(?::[^>]*)?>")
#: Documented names of route arguments whose Python name is shorter: the old service's clients
#: were generated with ``{mac_address}``, and the metrics' route labels keep ``<mac>``.
DOCUMENTED_NAMES = {"mac": "mac_address"}


def _documented(match: re.Match[str]) -> str:
    return "{" + DOCUMENTED_NAMES.get(match[1], match[1]) + "}"


def openapi_path(rule: str) -> str:
    """The OpenAPI path template of a Bottle rule (``<mac:re:...>`` -> ``{mac_address}``)."""
    return _PARAM.sub(_documented, rule)


def path_parameters(rule: str) -> list[str]:
    """The documented names of a rule's arguments, in order."""
    return [DOCUMENTED_NAMES.get(name, name) for name in _PARAM.findall(rule)]


def operation_id(endpoint: Endpoint) -> str:
    """The operationId: the old service's style (``get__api_health``), as a plain identifier.

    Parameter braces are dropped and any other character that is not a letter, digit or ``_``
    (``/``, ``.``) becomes ``_``, so every generator can use it as a function name:
    ``get__esp32_config_mac_address_json``.
    """
    if endpoint.legacy_operation_id:
        return endpoint.legacy_operation_id
    path = openapi_path(endpoint.rule).replace("{", "").replace("}", "")
    return endpoint.method.lower() + "_" + re.sub(r"\W", "_", path, flags=re.ASCII)


def rules() -> list[str]:
    """Distinct rules in table order (each also gets an OPTIONS route)."""
    return list(dict.fromkeys(endpoint.rule for endpoint in ENDPOINTS))


def allowed_methods(rule: str) -> str:
    """The ``Allow`` value of a rule: its methods, HEAD wherever GET is, and OPTIONS."""
    methods = {endpoint.method for endpoint in ENDPOINTS if endpoint.rule == rule}
    if "GET" in methods:
        methods.add("HEAD")
    methods.add("OPTIONS")
    return ", ".join(sorted(methods))
