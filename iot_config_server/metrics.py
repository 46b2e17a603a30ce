"""Prometheus metrics of one app, in a registry of its own (two apps in a process stay apart).

Label values are route templates (``/api/configs/<mac>``), operation names and codes, never raw
paths or MACs, so the series count is bounded by the route table. Hot paths use label children
bound once per route, not a ``labels()`` lookup per request.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE", "UNMATCHED_ROUTE", "AppMetrics", "OperationMetrics", "RouteMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The route label of requests that matched no route (404/405), so typos cannot add series.
UNMATCHED_ROUTE = "<unmatched>"
# Device polls answer in well under a millisecond from cache; writes fsync and take milliseconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _version() -> str:
    try:
        return metadata.version("iot-config")
    except metadata.PackageNotFoundError:
        return "unknown"


class RouteMetrics:
    """The request counter and duration histogram of one route template, pre-bound."""

    def __init__(self, metrics: AppMetrics, route: str) -> None:
        self._requests = metrics.requests
        self._route = route
        self._duration = metrics.duration.labels(route)
        # (method, status) -> counter child; bounded by methods x statuses of one route.
        self._counters: dict[tuple[str, int], Callable[[], None]] = {}

    def count(self, method: str, status: int) -> None:
        """Count an answer without timing it (requests that matched no route)."""
        inc = self._counters.get((method, status))
        if inc is None:
            inc = self._requests.labels(method, self._route, str(status)).inc
            self._counters[(method, status)] = inc
        inc()

    def observe(self, method: str, status: int, seconds: float) -> None:
        """Count an answer and record how long it took."""
        self.count(method, status)
        self._duration.observe(seconds)


class OperationMetrics:
    """Outcome counters of one store operation (``get_raw``, ``put``, ...), pre-bound."""

    def __init__(self, metrics: AppMetrics, operation: str) -> None:
        self._operations = metrics.operations
        self._store_errors = metrics.store_errors.labels(operation)
        self._operation = operation
        self.ok: Callable[[], None] = metrics.operations.labels(operation, "ok").inc
        self._failures: dict[str, Callable[[], None]] = {}

    def failed(self, code: str) -> None:
        """Count a failed operation by the core error code (``NOT_FOUND``, ...)."""
        inc = self._failures.get(code)
        if inc is None:
            inc = self._operations.labels(self._operation, code.lower()).inc
            self._failures[code] = inc
        inc()
        if code == "STORE_UNAVAILABLE":
            self._store_errors.inc()


class AppMetrics:
    """All metrics of one app; ``config_count`` is read at scrape time, without store I/O."""

    def __init__(self, config_count: Callable[[], int], *, namespace: str = "iot_config") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            namespace=namespace,
            registry=self.registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time to produce an answer, by route template.",
            ["route"],
            namespace=namespace,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.operations = Counter(
            "config_operations",
            "Store operations, by operation and outcome (ok or the error code).",
            ["operation", "outcome"],
            namespace=namespace,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "store_errors",
            "Store failures (backend unavailable), by operation.",
            ["operation"],
            namespace=namespace,
            registry=self.registry,
        )
        self.configs = Gauge(
            "configs",
            "Valid configs in the most recent listing of the store.",
            namespace=namespace,
            registry=self.registry,
        )
        self.configs.set_function(lambda: float(config_count()))
        self.build = Info(
            "build", "Version of the running server.", namespace=namespace, registry=self.registry
        )
        self.build.info({"version": _version(), "python": platform.python_version()})
        self._routes: dict[str, RouteMetrics] = {}

    def route(self, template: str) -> RouteMetrics:
        """The pre-bound metrics of a route template (one object per template)."""
        found = self._routes.get(template)
        if found is None:
            found = self._routes[template] = RouteMetrics(self, template)
        return found

    def operation(self, name: str) -> OperationMetrics:
        """Pre-bound outcome counters of one store operation."""
        return OperationMetrics(self, name)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric of this app."""
        return generate_latest(self.registry)
