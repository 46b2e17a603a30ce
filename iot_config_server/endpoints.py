"""The route table as data: what `create_app` registers and what `openapi` documents.

Both read this one tuple, so the served routes and the documented ones are the same list. Nothing
here imports bottle: the table is also the contract the tests compare the app against.
"""

from __future__ import annotations

import re

import attrs

from iot_config_core import ErrorCode
from iot_config_core.wire import ConfigListWire, ConfigWire

from .api_models import HealthyReport, PutConfigRequest, UnhealthyReport
from .history_api import HistoryWire, RollbackRequest
from .http_errors import ApiErrorCode, Code

__all__ = [
    "ENDPOINTS",
    "Endpoint",
    "Header",
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
    description: str = ""
    #: The operationId when it is not the one `operation_id` derives: the old service's names,
    #: braces and all, which generated clients call.
    legacy_operation_id: str = ""

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
_RAW_ERRORS = (*_MAC_ERRORS, *_STORED_ERRORS, ApiErrorCode.INVALID_HEADER)

#: Every route of the app except the generated OPTIONS (CORS preflight) routes.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "list_configs",
        "GET",
        "/api/configs",
        "List every valid config's summary, sorted by MAC address",
        "configs",
        (Reply(200, "The fleet.", ConfigListWire),),
        errors=(ErrorCode.STORE_UNAVAILABLE, ApiErrorCode.STORE_BUSY),
        action="list configs",
        admin=True,
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
        (Reply(200, "What was stored.", ConfigWire, headers=(ETAG,)),),
        errors=(
            ErrorCode.INVALID_MAC,
            ApiErrorCode.INVALID_BODY,
            ErrorCode.INVALID_DOCUMENT,
            ApiErrorCode.INVALID_HEADER,
            ErrorCode.PRECONDITION_FAILED,
            ErrorCode.ALREADY_EXISTS,
            ApiErrorCode.PAYLOAD_TOO_LARGE,
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            ErrorCode.STORE_UNAVAILABLE,
            ApiErrorCode.STORE_BUSY,
            ErrorCode.UNSUPPORTED_STORE,
        ),
        action="save config",
        admin=True,
        request_model=PutConfigRequest,
        request_headers=(IF_MATCH, IF_NONE_MATCH_WRITE),
        description="`allow_overwrite: false` refuses to replace an existing config (409).",
        legacy_operation_id="put__api_configs_{mac_address}",
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
