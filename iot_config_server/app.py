"""`create_app`: the Bottle application over one `ConfigStore`.

Handlers only parse, call the store and shape the answer; every rule lives in the core. What all
routes share (request id, error bodies, security and CORS headers, auth, metrics) is one Bottle
plugin, so it also applies when the app is mounted into a parent Bottle app. The device endpoint,
polled far more than the rest, is the exception: `_DeviceEndpoint` builds its whole answer itself
(with the same error answers) and is reached before Bottle's routing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode

import attrs
import bottle

from iot_config_core import (
    ConfigError,
    ConfigStore,
    ETagCondition,
    InvalidETagError,
    Listing,
    ListQuery,
    MacAddress,
    RawDocument,
    StoredConfig,
    StoredSchema,
    Validation,
    attributed,
    compute_etag,
)
from iot_config_core.wire import config_to_wire, summaries_to_wire

from . import docs, openapi
from .api_models import HealthyReport, UnhealthyReport, api_converter
from .auth import BearerAuth
from .cors import CorsPolicy
from .device_auth import Authorize, DeviceAuth
from .endpoints import ENDPOINTS, Endpoint, allowed_methods, rules
from .history_api import history_to_wire, parse_rollback_request
from .http_errors import ApiError, ApiErrorCode, error_body_bytes, http_error_for, user_message
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import UNMATCHED_ROUTE, AppMetrics, FreshValue, RouteMetrics
from .request_body import (
    ENVELOPE_ALLOWANCE,
    parse_patch_request,
    parse_put_request,
    patch_media_type,
    read_body,
    require_json,
)
from .request_ids import HEADER as REQUEST_ID_HEADER
from .request_ids import current_request_id, request_id_from_environ
from .schema_api import parse_put_schema, schema_wire
from .settings import Settings
from .store_gate import StoreGate

__all__ = ["ENDPOINT_CONFIG_KEY", "METRICS_CONFIG_KEY", "create_app"]

log = logging.getLogger(__name__)

JSON = "application/json"
#: Key in each Bottle route's config that holds its `Endpoint` (read by the plugin and tests).
ENDPOINT_CONFIG_KEY = "iot_config.endpoint"
#: Key in the app's config that holds its `AppMetrics` (for runners that expose them elsewhere).
METRICS_CONFIG_KEY = "iot_config.metrics"

Handler = Callable[..., Any]
StartResponse = Callable[..., Any]
#: A device read: (document, quoted ETag, whether If-None-Match matched it); no document for a
#: match, which may be answered without reading it.
DeviceRead = Callable[[str, str | None], tuple[RawDocument | None, str, bool]]


def create_app(
    store: ConfigStore,
    settings: Settings,
    *,
    on_change: Callable[[MacAddress], object] | None = None,
) -> bottle.Bottle:
    """A new Bottle app serving ``store``; nothing global, so apps on two stores coexist.

    Document size limits are the store's own, and must be the ones ``settings`` ask for: open the
    store with `Settings.open_store` (or ``limits=settings.document_limits``). A mismatch raises
    `ValueError` rather than silently serving a limit nobody configured.

    ``on_change`` is told the MAC of each config this app wrote or deleted (MQTT notifications);
    it must return at once, whatever it does with it.
    """
    if store.limits.max_bytes != settings.max_document_bytes:
        raise ValueError(
            f"the store's document limit ({store.limits.max_bytes} bytes) is not the settings' "
            f"max_document_bytes ({settings.max_document_bytes}): open it with "
            "Settings.open_store()"
        )
    app = _ConfigApp()
    # No JSON/template plugins: every handler returns the bytes it encoded.
    app.uninstall(True)  # noqa: FBT003
    # The listing re-reads only files whose version changed since the last one, so a scrape costs
    # one metadata scan and counts every write, whoever made it (replicas, CLI, hand edits).
    metrics = AppMetrics(FreshValue(lambda: len(store.listing().summaries), "the config count"))
    app.config[METRICS_CONFIG_KEY] = metrics
    store.count_device_cache(metrics.device_cache_hit, metrics.device_cache_miss)
    cors = CorsPolicy(settings.cors_origins)
    auth = BearerAuth(settings.admin_tokens)
    routes = _Routes(
        app,
        store,
        metrics,
        StoreGate(settings.threads, stall_after=settings.store_stall_seconds),
        on_change or _unheard,
    )
    device_auth = DeviceAuth.from_settings(settings, store, auth, metrics)
    authorize = device_auth.check if device_auth.active else None
    devices = _DeviceEndpoint(routes.device_read, metrics, cors, authorize)
    app.install(_RequestPlugin(metrics, cors, auth))
    for endpoint in ENDPOINTS:
        if endpoint.name in _DEVICE_ENDPOINTS:
            callback = devices.route_callback(devices.route_of(endpoint.rule))
            skip = True  # the endpoint answers whole: request id, headers, metrics
        else:
            callback, skip = getattr(routes, endpoint.name), None
        app.route(
            endpoint.rule,
            method=endpoint.method,
            callback=callback,
            name=endpoint.name,
            skip=skip,
            **{ENDPOINT_CONFIG_KEY: endpoint},
        )
    for rule in rules():
        allow = allowed_methods(rule)
        app.route(
            rule,
            method="OPTIONS",
            callback=_preflight(cors, allow),
            **{ENDPOINT_CONFIG_KEY: _options_endpoint(rule)},
        )
    unmatched = metrics.route(UNMATCHED_ROUTE)

    def route_error(error: bottle.HTTPError) -> bytes:
        return _route_error(error, cors, unmatched)

    for status in (400, 404, 405, 500):
        app.error_handler[status] = route_error
    app.dispatch_devices_to(devices)
    return app


def _unheard(_mac: MacAddress) -> None:
    """The ``on_change`` of an app nobody listens to."""


class _ConfigApp(bottle.Bottle):  # type: ignore[misc]  # bottle has no type hints
    """A Bottle app that hands GET/HEAD of the device routes to their endpoint directly.

    Devices poll one route many times a second; Bottle's per-request machinery (binding the
    thread-local request and response, routing, the plugin wrapper) measured as more than half of
    its cost. `_DeviceEndpoint` is that route's only implementation; the Bottle routes of the same
    rules call it too, so it also answers when the app is mounted into a parent Bottle app.
    """

    _devices: _DeviceEndpoint | None = None

    def dispatch_devices_to(self, devices: _DeviceEndpoint) -> None:
        """Answer device GET/HEAD requests with ``devices`` before Bottle's routing."""
        # Bottle refuses to set an instance attribute twice (its plugin-conflict guard).
        object.__setattr__(self, "_devices", devices)

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        """The WSGI interface: device reads straight to their endpoint, the rest to Bottle."""
        devices = self._devices
        if devices is not None:
            found = devices.match(environ)
            if found is not None:
                return devices.answer(environ, start_response, *found)
        return super().wsgi(environ, start_response)

    __call__ = wsgi


#: The device routes' fixed text after the MAC (the rules `.../<mac>.json` of `ENDPOINTS`).
_DEVICE_SUFFIX = ".json"
_SUFFIX_LENGTH = len(_DEVICE_SUFFIX)
# The device answers' constant headers, built once.
_NO_CACHE = ("Cache-Control", "no-cache")
_JSON_TYPE = ("Content-Type", JSON)
_NOSNIFF = ("X-Content-Type-Options", "nosniff")
_DEVICE_ENDPOINTS = ("raw_config", "device_config")


@attrs.frozen
class _DeviceRoute:
    """What differs between the device rules: their metrics and the action errors name."""

    metrics: RouteMetrics
    action: str


class _DeviceEndpoint:
    """GET and HEAD of a device document (``/esp32/config/<mac>.json``): a WSGI answer of its own.

    The whole answer is built here: the document or a 304 with its ETag, ``Cache-Control:
    no-cache``, the request id (also in the logging context while the store is read), the headers
    every answer carries, metrics, and errors through the same `_error_answer` as every route.
    """

    def __init__(
        self,
        read: DeviceRead,
        metrics: AppMetrics,
        cors: CorsPolicy,
        authorize: Authorize | None = None,
    ) -> None:
        self._read = read
        self._authorize = authorize  # device auth (docs/security.md); None when it is off
        self._cors = cors
        self._no_origin_cors = cors.headers(None)
        self._prefixes: list[tuple[str, _DeviceRoute]] = []
        for endpoint in ENDPOINTS:
            if endpoint.name in _DEVICE_ENDPOINTS:
                prefix, suffix = endpoint.rule.split("<mac>")
                assert suffix == _DEVICE_SUFFIX, endpoint.rule
                route = _DeviceRoute(metrics.route(endpoint.template), endpoint.action)
                self._prefixes.append((prefix, route))

    def match(self, environ: dict[str, Any]) -> tuple[str, _DeviceRoute] | None:
        """The MAC and route metrics of a device GET/HEAD, or None for anything else.

        Matches exactly the paths Bottle's ``<mac>`` (one non-empty segment) would; non-ASCII
        paths, which Bottle re-decodes, are left to Bottle's routing of the same endpoint.
        """
        method = environ.get("REQUEST_METHOD")
        if method != "GET" and method != "HEAD":  # noqa: PLR1714 -- cheaper than a set here
            return None
        path: str = environ.get("PATH_INFO") or ""
        for prefix, route in self._prefixes:
            if path.startswith(prefix):
                mac = path[len(prefix) : -_SUFFIX_LENGTH]
                if mac and "/" not in mac and path.endswith(_DEVICE_SUFFIX) and path.isascii():
                    return mac, route
                return None
        return None

    def answer(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        mac: str,
        route: _DeviceRoute,
    ) -> list[bytes]:
        """The WSGI answer to a GET or HEAD of ``mac``'s document."""
        started = perf_counter()
        method = environ["REQUEST_METHOD"]
        rid = request_id_from_environ(environ)
        origin = environ.get("HTTP_ORIGIN")
        cors = self._no_origin_cors if origin is None else self._cors.headers(origin)
        token = current_request_id.set(rid)
        try:
            if self._authorize is not None:  # before the store: no answer reveals a MAC exists
                self._authorize(mac, environ)
            doc, etag, not_modified = self._read(mac, environ.get("HTTP_IF_NONE_MATCH"))
        except Exception as exc:
            status_line, headers, body = self._failure(exc, rid, method, route)
        else:
            if not_modified:
                start_response(
                    "304 Not Modified",
                    [("ETag", etag), _NO_CACHE, (REQUEST_ID_HEADER, rid), _NOSNIFF, *cors],
                )
                route.metrics.observe(method, 304, perf_counter() - started)
                return []
            assert doc is not None  # only a 304 comes without the document
            data = doc.data
            start_response(
                "200 OK",
                [
                    ("ETag", etag),
                    _NO_CACHE,
                    _JSON_TYPE,
                    (REQUEST_ID_HEADER, rid),
                    _NOSNIFF,
                    *cors,
                    ("Content-Length", str(len(data))),
                ],
            )
            route.metrics.observe(method, 200, perf_counter() - started)
            return [] if method == "HEAD" else [data]
        finally:
            current_request_id.reset(token)
        headers += [(REQUEST_ID_HEADER, rid), _NOSNIFF, *cors]
        headers.append(("Content-Length", str(len(body))))
        start_response(status_line, headers)
        route.metrics.observe(method, int(status_line[:3]), perf_counter() - started)
        return [] if method == "HEAD" else [body]

    @staticmethod
    def _failure(
        exc: Exception, rid: str, method: str, route: _DeviceRoute
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        answer = bottle.BaseResponse()
        body = _failure_answer(
            answer, exc, rid, method=method, template=route.metrics.template, action=route.action
        )
        return answer.status_line, list(answer.headerlist), body

    def route_of(self, rule: str) -> _DeviceRoute:
        """The route of a device rule (``/esp32/config/<mac>.json``)."""
        prefix = rule.split("<mac>", maxsplit=1)[0]
        return next(route for known, route in self._prefixes if known == prefix)

    def route_callback(self, route: _DeviceRoute) -> Handler:
        """The Bottle callback of a device rule: the same answer, for a parent app that mounts ours.

        Installed with every plugin skipped: this answer carries its own request id, headers and
        metrics.
        """

        def device(mac: str) -> bottle.HTTPResponse:
            started: list[tuple[str, list[tuple[str, str]]]] = []

            def start_response(status: str, headers: list[tuple[str, str]]) -> None:
                started.append((status, headers))

            body = b"".join(self.answer(bottle.request.environ, start_response, mac, route))
            status, headers = started[0]
            return bottle.HTTPResponse(body, int(status[:3]), headers)

        return device


def _options_endpoint(rule: str) -> Endpoint:
    return Endpoint(
        f"options:{rule}",
        "OPTIONS",
        rule,
        "Allowed methods; CORS preflight",
        "cors",
        (),
    )


# -- cross-cutting ----------------------------------------------------------------------------


def _common_headers(
    resp: bottle.BaseResponse, rid: str, cors: CorsPolicy, origin: str | None
) -> None:
    resp.set_header(REQUEST_ID_HEADER, rid)
    resp.set_header("X-Content-Type-Options", "nosniff")
    if cors.enabled:
        for name, value in cors.headers(origin):
            resp.set_header(name, value)


def _error_answer(
    resp: bottle.BaseResponse, error: ConfigError | ApiError, rid: str, action: str = ""
) -> bytes:
    """Turn a typed error into its status, headers and JSON body (a half-done answer's dropped).

    ``action`` is the route's `Endpoint.action`, for the message's "Cannot <action> because".
    """
    rule = http_error_for(error)
    resp.status = rule.status
    for name in ("ETag", "Cache-Control", "Content-Length"):
        if name in resp:
            del resp[name]
    resp.content_type = JSON
    for name, value in rule.headers:
        resp.set_header(name, value)
    return error_body_bytes(user_message(error, action), rule, error.details, rid)


def _internal_error() -> ApiError:
    return ApiError(
        ApiErrorCode.INTERNAL_ERROR,
        "an unexpected error happened in the server (the correlationId identifies it in the log)",
    )


def _failure_answer(
    resp: bottle.BaseResponse,
    exc: Exception,
    rid: str,
    *,
    method: str,
    template: str,
    action: str,
) -> bytes:
    """The answer to a request whose handler raised ``exc``, logged as what it is.

    A typed error is answered by its code (an outage, a 5xx, is logged without a traceback); any
    other exception is a bug: logged with its traceback and answered as a bare JSON 500.
    """
    if isinstance(exc, ConfigError | ApiError):
        body = _error_answer(resp, exc, rid, action)
        if resp.status_code >= 500:
            log.error("%s %s failed: %s", method, template, exc)
        return body
    log.error("unexpected error in %s %s", method, template, exc_info=exc)
    return _error_answer(resp, _internal_error(), rid, action)


class _RequestPlugin:
    """Request id, typed-error answers, auth, common headers and metrics around every route."""

    name = "iot_config"
    api = 2

    def __init__(self, metrics: AppMetrics, cors: CorsPolicy, auth: BearerAuth) -> None:
        self._metrics = metrics
        self._cors = cors
        self._auth = auth

    def apply(self, callback: Handler, route: bottle.Route) -> Handler:
        endpoint: Endpoint | None = route.config.get(ENDPOINT_CONFIG_KEY)
        # Labelled by the app's own template, not route.rule (which gains a mount prefix). Routes
        # someone adds to the returned app get the same treatment, labelled by their rule.
        template = route.rule if endpoint is None else endpoint.template
        observe = self._metrics.route(template).observe
        admin = endpoint is not None and endpoint.admin
        action = "" if endpoint is None else endpoint.action
        check_auth = self._auth.check if admin and self._auth.enabled else None
        cors = self._cors
        request = bottle.request
        response = bottle.response
        perf_counter = time.perf_counter

        def wrapper(**kwargs: Any) -> Any:
            environ = request.environ
            started = perf_counter()
            rid = request_id_from_environ(environ)
            token = current_request_id.set(rid)
            status = 0
            try:
                try:
                    author = None
                    if check_auth is not None:
                        author = check_auth(environ.get("HTTP_AUTHORIZATION"))
                    with attributed(author, "api", rid):  # recorded in the config's history
                        body = callback(**kwargs)
                except bottle.HTTPError as exc:  # bottle.abort() in a route added to the app
                    status = exc.status_code
                    raise  # answered as JSON by _route_error
                except bottle.HTTPResponse as answer:  # e.g. bottle.redirect()
                    answer.apply(response)
                    body = answer.body
                except Exception as exc:  # typed errors by their code, anything else a bare 500
                    body = _failure_answer(
                        response,
                        exc,
                        rid,
                        method=environ["REQUEST_METHOD"],
                        template=template,
                        action=action,
                    )
                _common_headers(response, rid, cors, environ.get("HTTP_ORIGIN"))
                return body
            finally:
                status = status or response.status_code
                observe(environ["REQUEST_METHOD"], status, perf_counter() - started)
                current_request_id.reset(token)

        return wrapper


def _route_error(error: bottle.HTTPError, cors: CorsPolicy, unmatched: Any) -> bytes:
    """JSON answers for what Bottle decides before a route runs: unknown path, wrong method."""
    request = bottle.request
    response = bottle.response
    environ = request.environ
    rid = request_id_from_environ(environ)
    status = error.status_code
    if status == 405:
        allow = {m.strip() for m in (error.get_header("Allow") or "").split(",") if m.strip()}
        if "GET" in allow:
            allow.add("HEAD")
        response.set_header("Allow", ", ".join(sorted(allow)))
        api_error = ApiError(
            ApiErrorCode.METHOD_NOT_ALLOWED,
            f"method {environ.get('REQUEST_METHOD', '')[:20]} is not allowed here "
            f"(allowed: {', '.join(sorted(allow))})",
            allowed=sorted(allow),
        )
    elif status == 404:
        path = environ.get("PATH_INFO", "")[:200]
        api_error = ApiError(
            ApiErrorCode.ROUTE_NOT_FOUND, f"there is no API route at {path!r}", path=path
        )
    elif status == 400:
        api_error = ApiError(
            ApiErrorCode.BAD_REQUEST,
            f"the request is malformed ({str(error.body)[:200]})",
        )
    else:
        token = current_request_id.set(rid)
        try:
            log.error("unhandled error", exc_info=error.exception)
        finally:
            current_request_id.reset(token)
        api_error = _internal_error()
    body = _error_answer(response, api_error, rid)
    _common_headers(response, rid, cors, environ.get("HTTP_ORIGIN"))
    if "bottle.route" not in environ:  # errors raised inside a route were counted by the plugin
        unmatched.count(_method_label(environ.get("REQUEST_METHOD", "")), response.status_code)
    return body


#: Methods counted by name for unmatched requests; anything else is "OTHER", so a client cannot
#: add series by inventing methods.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "OTHER"


def _preflight(cors: CorsPolicy, allow: str) -> Handler:
    def options(**_path: str) -> bytes:
        response = bottle.response
        environ = bottle.request.environ
        response.status = 204
        response.set_header("Allow", allow)
        if "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            for name, value in cors.preflight_headers(environ.get("HTTP_ORIGIN"), allow):
                response.set_header(name, value)
        return b""

    return options


def _parse_condition(value: str, header: str) -> ETagCondition:
    """The core's parse of an ``If-Match``/``If-None-Match`` value; a 400 naming the header."""
    try:
        return ETagCondition.parse(value)
    except InvalidETagError as exc:
        raise ApiError(
            ApiErrorCode.INVALID_HEADER,
            f"the {header} header is malformed ({exc.message})",
            header=header,
        ) from None


def _condition(environ: dict[str, Any], key: str, header: str) -> ETagCondition | None:
    value = environ.get(key)
    return None if value is None else _parse_condition(value, header)


def _quoted(etag: str) -> str:
    """An ETag as the header carries it (the core's ETags are the bare opaque value)."""
    return f'"{etag}"'


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _config_answer(config: StoredConfig) -> bytes:
    """The GET/PUT answer: the config's wire shape, with its ETag."""
    response = bottle.response
    response.set_header("ETag", _quoted(config.etag))
    response.content_type = JSON
    return _json(config_to_wire(config))


def _dry_run(environ: dict[str, Any]) -> bool:
    """The ``dry_run`` query flag: ``true``/``false`` (or ``1``/``0``); anything else is a 400."""
    values = parse_qs(environ.get("QUERY_STRING") or "", keep_blank_values=True).get("dry_run")
    if not values:
        return False
    value = values[-1].strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise ApiError(
        ApiErrorCode.BAD_REQUEST,
        f"the dry_run parameter must be true or false, not {value[:20]!r}",
        parameter="dry_run",
    )


def _dry_run_answer(config: StoredConfig, validation: Validation) -> bytes:
    """What a write would have stored: no ETag, since nothing with that tag exists yet.

    The schema that applies and its problem count (only a relaxed schema lets a write with
    problems through) are headers, so the body stays the config's one shape.
    """
    response = bottle.response
    response.set_header("X-Dry-Run", "true")
    if validation.schema is not None:
        response.set_header("X-Schema", validation.schema)
        response.set_header("X-Schema-Problems", str(len(validation.problems)))
    response.content_type = JSON
    return _json(config_to_wire(config))


def _schema_answer(stored: StoredSchema) -> bytes:
    response = bottle.response
    response.set_header("ETag", _quoted(stored.etag))
    response.content_type = JSON
    return _json(schema_wire(stored))


# -- handlers ---------------------------------------------------------------------------------


class _Routes:
    """The handlers of one app, bound to its store and metrics."""

    def __init__(
        self,
        app: bottle.Bottle,
        store: ConfigStore,
        metrics: AppMetrics,
        gate: StoreGate,
        on_change: Callable[[MacAddress], object],
    ) -> None:
        self._on_change = on_change
        self._app = app
        self._store = store
        self._metrics = metrics
        self._gate = gate
        self._ops = {
            name: metrics.operation(name)
            for name in (
                *("get_raw", "get", "list", "put", "patch", "delete", "schema", "validate"),
                *("history", "rollback"),
            )
        }
        self._list_answers = _ListAnswers()
        self._body_cap = store.limits.max_bytes + ENVELOPE_ALLOWANCE
        self._openapi = openapi.OpenApiCache()
        self._docs = docs.DocsAssets()
        self.device_read = self._device_read()

    def _device_read(self) -> DeviceRead:
        """The device hot path: one cached stat-validated read, counted, and its 304 decision."""
        get_raw = self._store.get_raw
        get_raw_unless = self._store.get_raw_unless
        op = self._ops["get_raw"]
        ok = op.ok
        failed = op.failed
        enter = self._gate.enter
        leave = self._gate.leave

        def read(mac: str, if_none_match: str | None) -> tuple[RawDocument | None, str, bool]:
            enter()
            try:
                # With a condition, an unchanged document is not even read (see get_raw_unless).
                doc = get_raw(mac) if if_none_match is None else get_raw_unless(mac, if_none_match)
            except InvalidETagError:
                _parse_condition(if_none_match or "", "If-None-Match")  # the 400 naming the header
                raise
            except ConfigError as exc:
                failed(exc.code)
                raise
            finally:
                leave()
            ok()
            if isinstance(doc, str):
                return None, _quoted(doc), True
            return doc, _quoted(doc.etag), False

        return read

    def _operate(self, name: str, action: Callable[[], Any], *, write: bool = False) -> Any:
        op = self._ops[name]
        self._gate.enter(write=write)
        try:
            result = action()
        except ConfigError as exc:
            op.failed(exc.code)
            raise
        finally:
            self._gate.leave()
        op.ok()
        return result

    def list_configs(self) -> bytes:
        request = bottle.request
        response = bottle.response
        environ = request.environ
        params = request.query.decode()  # UTF-8 text, as browsers send it
        query = ListQuery.from_text(**{name: params.get(name) for name in LIST_PARAMETERS})
        if_none_match = _condition(environ, "HTTP_IF_NONE_MATCH", "If-None-Match")
        listing = self._operate("list", self._store.listing)
        answer = self._list_answers.answer(listing, query)
        response.set_header("ETag", answer.etag)
        response.set_header("Cache-Control", "no-cache")
        if answer.next_cursor is not None:
            response.set_header("Link", _next_link(self._app, environ, answer.next_cursor))
        if if_none_match is not None and if_none_match.matches_weak(answer.etag[1:-1]):
            response.status = 304
            return b""
        response.content_type = JSON
        return answer.body

    def get_config(self, mac: str) -> bytes:
        return _config_answer(self._operate("get", lambda: self._store.get(mac)))

    def put_config(self, mac: str) -> bytes:
        environ = bottle.request.environ
        address = MacAddress.parse(mac)
        if_match = _condition(environ, "HTTP_IF_MATCH", "If-Match")
        if_none_match = _condition(environ, "HTTP_IF_NONE_MATCH", "If-None-Match")
        dry_run = _dry_run(environ)
        require_json(environ)
        put = parse_put_request(read_body(environ, self._body_cap), self._store.limits)
        stored = self._operate(
            "put",
            lambda: self._store.put(
                address,
                put.content,
                if_match=if_match,
                if_none_match=if_none_match,
                create_only=not put.allow_overwrite,
                dry_run=dry_run,
            ),
            write=not dry_run,
        )
        if dry_run:
            return _dry_run_answer(stored, self._store.validate(stored.content))
        log.info("stored config %s (etag %s)", stored.mac_address, stored.etag)
        self._on_change(stored.mac_address)
        return _config_answer(stored)

    def patch_config(self, mac: str) -> bytes:
        environ = bottle.request.environ
        address = MacAddress.parse(mac)
        if_match = _condition(environ, "HTTP_IF_MATCH", "If-Match")
        dry_run = _dry_run(environ)
        media_type = patch_media_type(environ)
        patch = parse_patch_request(
            read_body(environ, self._body_cap), media_type, self._store.limits
        )
        result = self._operate(
            "patch",
            lambda: self._store.patch(address, patch, if_match=if_match, dry_run=dry_run),
            write=not dry_run,
        )
        if dry_run:
            return _dry_run_answer(result.config, self._store.validate(result.config.content))
        if result.changed:
            log.info("patched config %s (etag %s)", address, result.config.etag)
        return _config_answer(result.config)

    def delete_config(self, mac: str) -> bytes:
        environ = bottle.request.environ
        address = MacAddress.parse(mac)
        if_match = _condition(environ, "HTTP_IF_MATCH", "If-Match")
        self._operate("delete", lambda: self._store.delete(address, if_match=if_match), write=True)
        log.info("deleted config %s", address)
        self._on_change(address)
        bottle.response.status = 204
        return b""

    def list_schemas(self) -> bytes:
        names = self._operate("schema", self._store.schemas.names)
        bottle.response.content_type = JSON
        return _json({"schemas": names})

    def get_schema(self, schema: str) -> bytes:
        return _schema_answer(self._operate("schema", lambda: self._store.schemas.get(schema)))

    def put_schema(self, schema: str) -> bytes:
        environ = bottle.request.environ
        if_match = _condition(environ, "HTTP_IF_MATCH", "If-Match")
        require_json(environ)
        body = parse_put_schema(read_body(environ, self._body_cap), self._store.limits)
        stored = self._operate(
            "schema",
            lambda: self._store.schemas.put(
                schema, body.schema, relaxed=body.relaxed, if_match=if_match
            ),
            write=True,
        )
        log.info("stored schema %s (etag %s, relaxed %s)", schema, stored.etag, stored.relaxed)
        return _schema_answer(stored)

    def delete_schema(self, schema: str) -> bytes:
        if_match = _condition(bottle.request.environ, "HTTP_IF_MATCH", "If-Match")
        self._operate(
            "schema", lambda: self._store.schemas.delete(schema, if_match=if_match), write=True
        )
        log.info("deleted schema %s", schema)
        bottle.response.status = 204
        return b""

    def validation_report(self) -> bytes:
        report = self._operate("validate", self._store.schema_report)
        bottle.response.content_type = JSON
        return _json(api_converter.unstructure(report))

    def config_history(self, mac: str) -> bytes:
        address = MacAddress.parse(mac)
        versions = self._operate("history", lambda: self._store.history(address))
        bottle.response.content_type = JSON
        return _json(history_to_wire(address, versions, self._store.history_limit))

    def config_version(self, mac: str, etag: str) -> bytes:
        address = MacAddress.parse(mac)
        return _config_answer(self._operate("history", lambda: self._store.version(address, etag)))

    def config_diff(self, mac: str) -> bytes:
        address = MacAddress.parse(mac)
        query = bottle.request.query
        old, new = query.get("from"), query.get("to")
        if not old:
            raise ApiError(
                ApiErrorCode.BAD_REQUEST, "the query parameter 'from' (an ETag) is absent"
            )
        patch = self._operate("history", lambda: self._store.diff(address, old, new or None))
        bottle.response.content_type = "application/json-patch+json"
        return _json(patch)

    def rollback_config(self, mac: str) -> bytes:
        environ = bottle.request.environ
        address = MacAddress.parse(mac)
        if_match = _condition(environ, "HTTP_IF_MATCH", "If-Match")
        require_json(environ)
        wanted = parse_rollback_request(read_body(environ, self._body_cap)).etag
        stored = self._operate(
            "rollback",
            lambda: self._store.rollback(address, wanted, if_match=if_match),
            write=True,
        )
        log.info("rolled back config %s to %s (etag %s)", address, wanted, stored.etag)
        return _config_answer(stored)

    def _health(self) -> bytes:
        response = bottle.response
        response.content_type = JSON
        response.set_header("Cache-Control", "no-store")
        try:
            self._gate.enter()
            try:
                self._store.check()
            finally:
                self._gate.leave()
        except (ConfigError, ApiError) as exc:  # failing, or too slow to get a turn: not ready
            log.warning("health check failed: %s", exc.message)
            response.status = 503
            return _json(api_converter.unstructure(UnhealthyReport(reason=exc.message)))
        return _json(api_converter.unstructure(HealthyReport()))

    def health(self) -> bytes:
        return self._health()

    def health_ready(self) -> bytes:
        return self._health()

    def health_live(self) -> bytes:
        response = bottle.response
        response.content_type = JSON
        response.set_header("Cache-Control", "no-store")
        return _json(api_converter.unstructure(HealthyReport()))

    def metrics(self) -> bytes:
        bottle.response.content_type = METRICS_CONTENT_TYPE
        return self._metrics.exposition()

    def openapi(self) -> bytes:
        bottle.response.content_type = JSON
        return self._openapi.document(_base_path(self._app, bottle.request.environ))

    def openapi_at_docs(self) -> bytes:
        return self.openapi()

    def docs(self) -> bytes:
        return self._docs.page(bottle.response)

    def docs_slash(self) -> bytes:
        return self._docs.page(bottle.response, trailing_slash=True)

    def docs_asset(self, name: str) -> bytes:
        return self._docs.asset(name, bottle.response)


#: The query parameters of ``GET /api/configs`` (names of `ListQuery.from_text`'s arguments).
LIST_PARAMETERS = ("name", "entity_id", "enable_ota", "cursor", "limit")


@attrs.frozen
class _ListAnswer:
    """One encoded list answer: body, quoted ETag, and the next page's cursor."""

    body: bytes
    etag: str
    next_cursor: str | None


class _ListAnswers:
    """The encoded answers of the current listing, so an unchanged listing is not re-encoded.

    The ETag is the MD5 of the body: the same fleet gives the same tag on every replica and
    after restarts, so a client's ``If-None-Match`` stays good behind a load balancer. Answers
    are dropped as soon as the listing's generation changes. The whole-fleet answer is always
    kept; pages and filtered answers only while they are small and few, so odd queries cannot
    grow memory.
    """

    MAX_ANSWERS = 64
    MAX_KEPT_BYTES = 256 * 1024

    def __init__(self) -> None:
        self._generation = -1
        self._answers: dict[ListQuery, _ListAnswer] = {}
        self._lock = threading.Lock()

    def answer(self, listing: Listing, query: ListQuery) -> _ListAnswer:
        """The answer to ``query`` over ``listing``, encoded at most once per generation."""
        with self._lock:
            if self._generation == listing.generation:
                found = self._answers.get(query)
                if found is not None:
                    return found
        page = query.select(listing.summaries)
        body = _json(summaries_to_wire(list(page.summaries)))
        found = _ListAnswer(body, _quoted(compute_etag(body)), page.next_cursor)
        with self._lock:
            if self._generation != listing.generation:
                if listing.generation < self._generation:
                    return found  # an older listing finished late: keep the newer answers
                self._generation = listing.generation
                self._answers = {}
            if query == _WHOLE_FLEET or (
                len(body) <= self.MAX_KEPT_BYTES and len(self._answers) < self.MAX_ANSWERS
            ):
                self._answers[query] = found
        return found


_WHOLE_FLEET = ListQuery()


def _next_link(app: bottle.Bottle, environ: dict[str, Any], cursor: str) -> str:
    """The ``Link`` header to the next page: this request's parameters with the new cursor."""
    kept = [
        (name, value)
        for name, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if name != "cursor"
    ]
    path = _base_path(app, environ).rstrip("/") + "/api/configs"
    return f'<{path}?{urlencode([*kept, ("cursor", cursor)])}>; rel="next"'


def _base_path(app: bottle.Bottle, environ: dict[str, Any]) -> str:
    """Where this app's routes start: the WSGI SCRIPT_NAME plus any Bottle mount prefix."""
    prefix = str(app.config.get("_mount.prefix") or "/")
    script = str(environ.get("SCRIPT_NAME") or "")
    base = (script.rstrip("/") + "/" + prefix.strip("/")).rstrip("/")
    return base or "/"
