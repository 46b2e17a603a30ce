"""The access log: one line per request with method, route, status, duration and request id.

A WSGI wrapper around the app rather than a hook in each request path, so every answer is logged
the same way, however the app produced it. The route is the app's template
(``/esp32/config/<mac>.json``), never the raw path, so a line names the endpoint without copying
a client's text into the log. Off by default (setting ``access_log``): the figures in the README
say what a line costs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import bottle

from .app import ENDPOINT_CONFIG_KEY
from .request_ids import ENVIRON_KEY, current_request_id
from .settings import Settings

__all__ = ["LOGGER_NAME", "wrap_access_log"]

LOGGER_NAME = "iot_config_server.access"
#: The route of a request no route matched (unknown path or method).
UNMATCHED = "-"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wrap_access_log(app: bottle.Bottle, settings: Settings) -> WsgiApp:
    """``app`` itself when the access log is off, else ``app`` logging one line per request."""
    if not settings.access_log:
        return app  # type: ignore[no-any-return]  # bottle has no type hints
    log = logging.getLogger(LOGGER_NAME)
    perf_counter = time.perf_counter

    def route_of(environ: dict[str, Any]) -> str:
        route = environ.get("bottle.route")
        if route is None:  # answered before Bottle's routing: look the route up
            try:
                route, _ = app.router.match(environ)
            except bottle.HTTPError:
                return UNMATCHED
        endpoint = route.config.get(ENDPOINT_CONFIG_KEY)
        return str(route.rule if endpoint is None else endpoint.template)

    def logged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = perf_counter()
        status = ["-"]

        def start(line: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            status[0] = line.split(" ", 1)[0]
            return start_response(line, headers, *exc_info)

        try:
            return app(environ, start)  # type: ignore[no-any-return]
        finally:
            duration_ms = round((perf_counter() - started) * 1000, 3)
            method = environ.get("REQUEST_METHOD", "-")
            route = route_of(environ)
            token = current_request_id.set(str(environ.get(ENVIRON_KEY, "-")))
            try:
                log.info(
                    "%s %s %s %.1f ms",
                    method,
                    route,
                    status[0],
                    duration_ms,
                    extra={
                        "method": method,
                        "route": route,
                        "status": int(status[0]) if status[0].isdigit() else None,
                        "duration_ms": duration_ms,
                    },
                )
            finally:
                current_request_id.reset(token)

    return logged
