"""`create_app`: the Bottle application over one `ConfigStore`.

Handlers only parse, call the store and shape the answer; every rule lives in the core. What all
routes share (request id, error bodies, security and CORS headers, auth, metrics) is one Bottle
plugin, so it also applies when the app is mounted into a parent Bottle app.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import bottle

from iot_config_core import (
    ConfigError,
    ConfigStore,
    ETagCondition,
    InvalidETagError,
    MacAddress,
    RawDocument,
    StoredConfig,
)
from iot_config_core.wire import config_to_wire, summaries_to_wire

from . import docs, openapi
from .api_models import HealthyReport, UnhealthyReport, api_converter
from .auth import BearerAuth
from .cors import CorsPolicy
from .endpoints import ENDPOINTS, Endpoint, allowed_methods, rules
from .http_errors import ApiError, error_body_bytes, http_error_for
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import UNMATCHED_ROUTE, AppMetrics
from .request_body import ENVELOPE_ALLOWANCE, parse_put_request, read_body, require_json
from .request_ids import HEADER as REQUEST_ID_HEADER
from .request_ids import current_request_id, request_id_from_environ
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
#: A device read: (document, quoted ETag, whether If-None-Match matched it).
DeviceRead = Callable[[str, str | None], tuple[RawDocument, str, bool]]
#: Answers a request whole, or returns None to leave it to Bottle's dispatch.
FastPath = Callable[[dict[str, Any], StartResponse], list[bytes] | None]

# Header names as Bottle stores them (its _hkey form) and constant values, for the hot path.
REQUEST_ID_KEY = REQUEST_ID_HEADER.title()
NOSNIFF_KEY = "X-Content-Type-Options"
_ETAG_KEY = "Etag"
_CACHE_CONTROL_KEY = "Cache-Control"
_CONTENT_TYPE_KEY = "Content-Type"
# Environ keys by which the device fast path hands a failed read to the Bottle route: the error
# (with the MAC it was for) and when the request started, so it is neither redone nor mistimed.
_DEFERRED_KEY = "iot_config.deferred_error"
_STARTED_KEY = "iot_config.started"


def create_app(
    store: ConfigStore,
    settings: Settings,
    *,
    on_change: Callable[[MacAddress], object] | None = None,
) -> bottle.Bottle:
    """A new Bottle app serving ``store``; nothing global, so apps on two stores coexist.

    ``on_change`` is told the MAC of each config this app wrote or deleted (MQTT notifications);
    it must return at once, whatever it does with it.

    Document size limits are the store's own (``store.limits``): open the store with
    ``DocumentLimits(max_bytes=settings.max_document_bytes)`` for the setting to apply.
    """
    app = _ConfigApp()
    # No JSON/template plugins: every handler returns the bytes it encoded.
    app.uninstall(True)  # noqa: FBT003
    metrics = AppMetrics(store.count)
    app.config[METRICS_CONFIG_KEY] = metrics
    cors = CorsPolicy(settings.cors_origins)
    auth = BearerAuth(settings.admin_tokens)
    routes = _Routes(app, store, metrics, StoreGate(settings.threads), on_change or _unheard)
    app.install(_RequestPlugin(metrics, cors, auth))
    for endpoint in ENDPOINTS:
        app.route(
            endpoint.rule,
            method=endpoint.method,
            callback=getattr(routes, endpoint.name),
            name=endpoint.name,
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
    app.use_fast_path(_device_fast_path(routes.device_read, metrics, cors))
    return app


def _unheard(_mac: MacAddress) -> None:
    """The ``on_change`` of an app nobody listens to."""


class _ConfigApp(bottle.Bottle):  # type: ignore[misc]  # bottle has no type hints
    """A Bottle app that answers successful device reads without Bottle's dispatch.

    Devices poll one route many times a second; Bottle's per-request machinery (binding the
    thread-local request and response, routing, plugin wrapper, header normalising) measured as
    more than half of its cost. The fast path answers only the case that needs none of it, a GET
    or HEAD of a device route that reads fine, and hands everything else to Bottle unchanged. Any
    change to what Bottle would do (routes, plugins, hooks added later) switches it off for good.
    """

    _fast: FastPath | None = None

    def use_fast_path(self, fast: FastPath | None) -> None:
        """Answer requests with ``fast`` first (until the app's routes, plugins or hooks change)."""
        # Bottle refuses to set an instance attribute twice (its plugin-conflict guard).
        object.__setattr__(self, "_fast", fast)

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        """The WSGI interface: the fast path when it answers, else Bottle's own."""
        fast = self._fast
        if fast is not None:
            body = fast(environ, start_response)
            if body is not None:
                return body
        return super().wsgi(environ, start_response)

    __call__ = wsgi

    def add_route(self, route: bottle.Route) -> Any:
        self.use_fast_path(None)
        return super().add_route(route)

    def install(self, plugin: Any) -> Any:
        self.use_fast_path(None)
        return super().install(plugin)

    def uninstall(self, plugin: Any) -> Any:
        self.use_fast_path(None)
        return super().uninstall(plugin)

    def add_hook(self, name: str, func: Callable[..., Any]) -> None:
        self.use_fast_path(None)
        super().add_hook(name, func)


#: The device routes' fixed text around the MAC (the rules `.../<mac>.json` of `ENDPOINTS`).
_DEVICE_SUFFIX = ".json"


def _device_fast_path(read: DeviceRead, metrics: AppMetrics, cors: CorsPolicy) -> FastPath:
    """The whole answer to a GET/HEAD of a device route whose read succeeds, as Bottle gives it.

    Headers, their order, the status line, metrics and the request id are exactly those of the
    Bottle route (tests compare the two). A request this does not answer -- another route or
    method, an Origin while CORS is on, a failed read -- goes to Bottle; a failed read is handed
    over in the environ, so the route raises it instead of reading again.
    """
    prefixes: list[tuple[str, int, Callable[[str, int, float], None]]] = []
    for endpoint in ENDPOINTS:
        if endpoint.name in ("raw_config", "device_config"):
            prefix, suffix = endpoint.rule.split("<mac>")
            assert suffix == _DEVICE_SUFFIX, endpoint.rule
            prefixes.append((prefix, len(prefix), metrics.route(endpoint.template).observe))
    (first, first_len, first_observe), (second, second_len, second_observe) = prefixes
    cors_on = cors.enabled
    cors_headers = cors.headers(None)  # what an answer without an Origin header carries
    cut = -len(_DEVICE_SUFFIX)
    perf_counter = time.perf_counter
    set_request_id = current_request_id.set
    reset_request_id = current_request_id.reset
    cache_control = (_CACHE_CONTROL_KEY, "no-cache")
    content_type = (_CONTENT_TYPE_KEY, JSON)
    nosniff = (NOSNIFF_KEY, "nosniff")

    def fast(environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
        method = environ.get("REQUEST_METHOD")
        if method != "GET" and method != "HEAD":  # noqa: PLR1714 -- cheaper than a set here
            return None
        path: str = environ.get("PATH_INFO") or ""
        if path.startswith(first):
            mac, observe = path[first_len:cut], first_observe
        elif path.startswith(second):
            mac, observe = path[second_len:cut], second_observe
        else:
            return None
        # Bottle would route only a non-empty segment; non-ASCII paths it re-decodes, so the MAC
        # it passes could differ from ours: leave those to it.
        if not mac or "/" in mac or not path.endswith(_DEVICE_SUFFIX) or not path.isascii():
            return None
        if cors_on and "HTTP_ORIGIN" in environ:
            return None
        started = perf_counter()
        rid = request_id_from_environ(environ)
        token = set_request_id(rid)
        try:
            doc, etag, not_modified = read(mac, environ.get("HTTP_IF_NONE_MATCH"))
        except Exception as exc:  # answered by the Bottle route, exactly as if it had read
            environ[_DEFERRED_KEY] = (mac, exc)
            environ[_STARTED_KEY] = started
            return None
        finally:
            reset_request_id(token)
        if not_modified:
            start_response(
                "304 Not Modified",
                [(_ETAG_KEY, etag), cache_control, (REQUEST_ID_KEY, rid), nosniff, *cors_headers],
            )
            body = []
            status = 304
        else:
            data = doc.data
            start_response(
                "200 OK",
                [
                    (_ETAG_KEY, etag),
                    cache_control,
                    content_type,
                    (REQUEST_ID_KEY, rid),
                    nosniff,
                    *cors_headers,
                    ("Content-Length", str(len(data))),
                ],
            )
            body = [] if method == "HEAD" else [data]
            status = 200
        observe(method, status, perf_counter() - started)
        return body

    return fast


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
    # Straight into Bottle's normalized header dict: set_header re-validates constant values on
    # every call, a measurable share of the device hot path (the request id is already sanitized).
    headers = resp._headers  # noqa: SLF001
    headers[REQUEST_ID_KEY] = [rid]
    headers[NOSNIFF_KEY] = ["nosniff"]  # fresh lists: Bottle's add_header appends in place
    if cors.enabled:
        for name, value in cors.headers(origin):
            resp.set_header(name, value)


def _error_answer(resp: bottle.BaseResponse, error: ConfigError | ApiError, rid: str) -> bytes:
    """Turn a typed error into its status and JSON body (headers of a half-done answer dropped)."""
    mapped = http_error_for(error)
    resp.status = mapped.status
    for name in ("ETag", "Cache-Control", "Content-Length"):
        if name in resp:
            del resp[name]
    resp.content_type = JSON
    if mapped.status == 401:
        resp.set_header("WWW-Authenticate", 'Bearer realm="iot-config"')
    if mapped.status == 503:
        resp.set_header("Retry-After", "1")
    return error_body_bytes(error.message, mapped.wire_code, error.details, rid)


def _internal_error(resp: bottle.BaseResponse, rid: str) -> bytes:
    return _error_answer(resp, ApiError("INTERNAL_ERROR", "internal server error"), rid)


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
        check_auth = self._auth.check if admin and self._auth.enabled else None
        cors = self._cors
        request = bottle.request
        response = bottle.response
        perf_counter = time.perf_counter

        def wrapper(**kwargs: Any) -> Any:
            environ = request.environ
            started = environ.pop(_STARTED_KEY, None) or perf_counter()
            rid = request_id_from_environ(environ)
            token = current_request_id.set(rid)
            status = 0
            try:
                try:
                    if check_auth is not None:
                        check_auth(environ.get("HTTP_AUTHORIZATION"))
                    body = callback(**kwargs)
                except (ConfigError, ApiError) as exc:
                    body = _error_answer(response, exc, rid)
                    if response.status_code >= 500:  # an outage, not a bug: no traceback
                        log.error(  # noqa: TRY400
                            "%s %s failed: %s", environ["REQUEST_METHOD"], template, exc
                        )
                except bottle.HTTPError as exc:  # bottle.abort() in a route added to the app
                    status = exc.status_code
                    raise  # answered as JSON by _route_error
                except bottle.HTTPResponse as answer:  # e.g. bottle.redirect()
                    answer.apply(response)
                    body = answer.body
                except Exception:  # the error boundary: log it, answer a bare JSON 500
                    log.exception("unexpected error in %s %s", environ["REQUEST_METHOD"], template)
                    body = _internal_error(response, rid)
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
            "METHOD_NOT_ALLOWED",
            f"method {environ.get('REQUEST_METHOD')} not allowed here",
            allowed=sorted(allow),
        )
    elif status == 404:
        api_error = ApiError(
            "ROUTE_NOT_FOUND", "no such route", path=environ.get("PATH_INFO", "")[:200]
        )
    elif status == 400:
        api_error = ApiError("BAD_REQUEST", str(error.body)[:200])
    else:
        token = current_request_id.set(rid)
        try:
            log.error("unhandled error", exc_info=error.exception)
        finally:
            current_request_id.reset(token)
        api_error = ApiError("INTERNAL_ERROR", "internal server error")
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
        raise ApiError("INVALID_HEADER", f"{header}: {exc.message}", header=header) from None


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
            name: metrics.operation(name) for name in ("get_raw", "get", "list", "put", "delete")
        }
        self._list_cache: tuple[int, bytes] = (-1, b"")
        self._body_cap = store.limits.max_bytes + ENVELOPE_ALLOWANCE
        self._openapi = openapi.OpenApiCache()
        self._docs = docs.DocsAssets()
        self.device_read = self._device_read()
        self.raw_config = self._raw_handler()
        self.device_config = self.raw_config

    def _device_read(self) -> DeviceRead:
        """The device hot path: one cached stat-validated read, counted, and its 304 decision.

        Shared by the Bottle route and the fast path in front of it, so both answer alike.
        """
        get_raw = self._store.get_raw
        op = self._ops["get_raw"]
        ok = op.ok
        failed = op.failed
        enter = self._gate.enter
        leave = self._gate.leave

        def read(mac: str, if_none_match: str | None) -> tuple[RawDocument, str, bool]:
            enter()
            try:
                doc = get_raw(mac)
            except ConfigError as exc:
                failed(exc.code)
                raise
            finally:
                leave()
            ok()
            etag = _quoted(doc.etag)
            if if_none_match is None:
                return doc, etag, False
            matched = if_none_match == etag or _parse_condition(
                if_none_match, "If-None-Match"
            ).matches_weak(doc.etag)
            return doc, etag, matched

        return read

    def _raw_handler(self) -> Handler:
        read = self.device_read
        request = bottle.request
        response = bottle.response

        def raw_config(mac: str) -> bytes:
            environ = request.environ
            deferred = environ.pop(_DEFERRED_KEY, None)
            if deferred is not None and deferred[0] == mac:
                raise deferred[1]  # the fast path's read of this very request failed
            doc, etag, not_modified = read(mac, environ.get("HTTP_IF_NONE_MATCH"))
            headers = response._headers  # noqa: SLF001 (see _common_headers)
            headers[_ETAG_KEY] = [etag]
            headers[_CACHE_CONTROL_KEY] = ["no-cache"]
            headers[_CONTENT_TYPE_KEY] = [JSON]
            if not_modified:
                response.status = 304
                return b""
            return doc.data

        return raw_config

    def _operate(self, name: str, action: Callable[[], Any]) -> Any:
        op = self._ops[name]
        self._gate.enter()
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
        listing = self._operate("list", self._store.listing)
        generation, body = self._list_cache
        if generation != listing.generation:
            body = _json(summaries_to_wire(list(listing.summaries)))
            self._list_cache = (listing.generation, body)
        bottle.response.content_type = JSON
        return body

    def get_config(self, mac: str) -> bytes:
        return _config_answer(self._operate("get", lambda: self._store.get(mac)))

    def put_config(self, mac: str) -> bytes:
        environ = bottle.request.environ
        address = MacAddress.parse(mac)
        if_match = _condition(environ, "HTTP_IF_MATCH", "If-Match")
        if_none_match = _condition(environ, "HTTP_IF_NONE_MATCH", "If-None-Match")
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
            ),
        )
        log.info("stored config %s (etag %s)", stored.mac_address, stored.etag)
        self._on_change(stored.mac_address)
        return _config_answer(stored)

    def delete_config(self, mac: str) -> bytes:
        environ = bottle.request.environ
        address = MacAddress.parse(mac)
        if_match = _condition(environ, "HTTP_IF_MATCH", "If-Match")
        self._operate("delete", lambda: self._store.delete(address, if_match=if_match))
        log.info("deleted config %s", address)
        self._on_change(address)
        bottle.response.status = 204
        return b""

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

    def docs(self) -> bytes:
        return self._docs.page(bottle.response)

    def docs_asset(self, name: str) -> bytes:
        return self._docs.asset(name, bottle.response)


def _base_path(app: bottle.Bottle, environ: dict[str, Any]) -> str:
    """Where this app's routes start: the WSGI SCRIPT_NAME plus any Bottle mount prefix."""
    prefix = str(app.config.get("_mount.prefix") or "/")
    script = str(environ.get("SCRIPT_NAME") or "")
    base = (script.rstrip("/") + "/" + prefix.strip("/")).rstrip("/")
    return base or "/"
