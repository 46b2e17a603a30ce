"""Prometheus metrics of one app, in a registry of its own (two apps in a process stay apart).

Label values are route templates (``/api/configs/<mac>``), operation names and codes, never raw
paths or MACs, so the series count is bounded by the route table.

The per-request series (requests, durations, store operations) are counted by `RequestStats`:
plain integers in per-thread shards, summed only when Prometheus scrapes. prometheus_client's own
counters take a lock and run checks on every increment, which measured as the largest share of
this layer's cost on the device hot path; rare series (config count, build info) use it as usual.
"""

from __future__ import annotations

import platform
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import TypeVar

from prometheus_client import CollectorRegistry, Gauge, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from iot_config_core import ConfigError

__all__ = [
    "CONTENT_TYPE",
    "UNMATCHED_ROUTE",
    "AppMetrics",
    "OperationMetrics",
    "RequestStats",
    "RouteMetrics",
]

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


class _Shard:
    """One thread's counts; only that thread writes it, so increments need no lock."""

    __slots__ = ("durations", "operations", "requests", "store_errors", "sums")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.durations: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.operations: dict[tuple[str, str], int] = {}
        self.store_errors: dict[str, int] = {}


def _add(total: _Shard, shard: _Shard, width: int) -> None:
    """Add ``shard``'s counts into ``total`` (dict copies are atomic under the GIL)."""
    for key, value in dict(shard.requests).items():
        total.requests[key] = total.requests.get(key, 0) + value
    shard_sums = dict(shard.sums)
    for route, counts in dict(shard.durations).items():
        into = total.durations.setdefault(route, [0] * width)
        for i, count in enumerate(list(counts)):
            into[i] += count
        total.sums[route] = total.sums.get(route, 0.0) + shard_sums.get(route, 0.0)
    for op_key, value in dict(shard.operations).items():
        total.operations[op_key] = total.operations.get(op_key, 0) + value
    for operation, value in dict(shard.store_errors).items():
        total.store_errors[operation] = total.store_errors.get(operation, 0) + value


class RequestStats(Collector):
    """Request, duration and operation counts, kept per thread and merged at scrape time."""

    #: Past this many shards, those of finished threads are folded into one (servers that start
    #: a thread per request would otherwise grow the list forever).
    FOLD_THRESHOLD = 64

    def __init__(self, namespace: str, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self._namespace = namespace
        self._buckets = buckets
        self._width = len(buckets) + 1
        self._local = threading.local()
        self._shards: list[tuple[threading.Thread, _Shard]] = []
        self._retired = _Shard()
        self._lock = threading.Lock()
        self._routes: set[str] = set()
        self._operations: set[str] = set()

    def shard(self) -> _Shard:
        """This thread's shard (created on the thread's first request)."""
        try:
            shard: _Shard = self._local.shard
        except AttributeError:
            shard = self._local.shard = _Shard()
            with self._lock:
                if len(self._shards) >= self.FOLD_THRESHOLD:
                    self._fold_finished()
                self._shards.append((threading.current_thread(), shard))
        return shard

    def _fold_finished(self) -> None:
        """Merge shards of threads that ended into the retired totals (caller holds the lock)."""
        alive = []
        for thread, shard in self._shards:
            if thread.is_alive():
                alive.append((thread, shard))
            else:
                _add(self._retired, shard, self._width)
        self._shards = alive

    def declare(self, route: str | None = None, operation: str | None = None) -> None:
        """Make a route's histogram and an operation's error counter visible before any use."""
        with self._lock:
            if route is not None:
                self._routes.add(route)
            if operation is not None:
                self._operations.add(operation)

    def observe(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """Count one answer, and its duration unless ``seconds`` is None."""
        shard = self.shard()
        key = (method, route, str(status))
        requests = shard.requests
        requests[key] = requests.get(key, 0) + 1
        if seconds is not None:
            counts = shard.durations.get(route)
            if counts is None:
                counts = shard.durations[route] = [0] * self._width
                shard.sums[route] = 0.0
            counts[bisect_left(self._buckets, seconds)] += 1
            shard.sums[route] += seconds

    def operation(self, operation: str, outcome: str, *, store_error: bool = False) -> None:
        """Count one store operation by outcome (``ok`` or a lower-case error code)."""
        shard = self.shard()
        key = (operation, outcome)
        shard.operations[key] = shard.operations.get(key, 0) + 1
        if store_error:
            shard.store_errors[operation] = shard.store_errors.get(operation, 0) + 1

    def shard_count(self) -> int:
        """Shards currently kept (for tests of the folding)."""
        with self._lock:
            return len(self._shards)

    def collect(self) -> Iterator[Metric]:
        """Sum the shards into Prometheus families; writers are never blocked."""
        total = _Shard()
        with self._lock:
            self._fold_finished()
            _add(total, self._retired, self._width)
            shards = [shard for _, shard in self._shards]
            for route in self._routes:
                total.durations.setdefault(route, [0] * self._width)
                total.sums.setdefault(route, 0.0)
            for operation in self._operations:
                total.store_errors.setdefault(operation, 0)
        for shard in shards:
            _add(total, shard, self._width)
        ns = self._namespace
        yield _counter(
            f"{ns}_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            total.requests,
        )
        histogram = HistogramMetricFamily(
            f"{ns}_http_request_duration_seconds",
            "Time to produce an answer, by route template.",
            labels=["route"],
        )
        bounds = [repr(bound) for bound in self._buckets] + ["+Inf"]
        for route, counts in sorted(total.durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            histogram.add_metric([route], buckets, total.sums[route])
        yield histogram
        yield _counter(
            f"{ns}_config_operations",
            "Store operations, by operation and outcome (ok or the error code).",
            ["operation", "outcome"],
            total.operations,
        )
        yield _counter(
            f"{ns}_store_errors",
            "Store failures (backend unavailable), by operation.",
            ["operation"],
            {(operation,): value for operation, value in total.store_errors.items()},
        )


_Labels = TypeVar("_Labels", bound=tuple[str, ...])


def _counter(
    name: str, documentation: str, labels: list[str], counts: Mapping[_Labels, int]
) -> CounterMetricFamily:
    """A counter family with one sample per label tuple, in a stable order."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, value in sorted(counts.items()):
        family.add_metric(list(values), value)
    return family


class RouteMetrics:
    """The request counter and duration histogram of one route template."""

    def __init__(self, stats: RequestStats, route: str) -> None:
        self._stats = stats
        self._route = route

    def count(self, method: str, status: int) -> None:
        """Count an answer without timing it (requests that matched no route)."""
        self._stats.observe(method, self._route, status, None)

    def observe(self, method: str, status: int, seconds: float) -> None:
        """Count an answer and record how long it took."""
        self._stats.observe(method, self._route, status, seconds)


class OperationMetrics:
    """Outcome counters of one store operation (``get_raw``, ``put``, ...)."""

    def __init__(self, stats: RequestStats, operation: str) -> None:
        self._stats = stats
        self._operation = operation
        stats.declare(operation=operation)

    def ok(self) -> None:
        """Count a successful operation."""
        self._stats.operation(self._operation, "ok")

    def failed(self, code: str) -> None:
        """Count a failed operation by the core error code (``NOT_FOUND``, ...)."""
        self._stats.operation(
            self._operation, code.lower(), store_error=code == "STORE_UNAVAILABLE"
        )


def _count_or_nan(config_count: Callable[[], int]) -> float:
    """The count, or NaN when the store cannot say: a scrape must answer during an outage."""
    try:
        return float(config_count())
    except ConfigError:
        return float("nan")


class AppMetrics:
    """All metrics of one app; ``config_count`` is read at scrape time (a metadata scan)."""

    def __init__(self, config_count: Callable[[], int], *, namespace: str = "iot_config") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = RequestStats(namespace)
        self.registry.register(self.stats)
        self.configs = Gauge(
            "configs",
            "Valid configs in the store when scraped (NaN while the store is unavailable).",
            namespace=namespace,
            registry=self.registry,
        )
        self.configs.set_function(lambda: _count_or_nan(config_count))
        self.build = Info(
            "build", "Version of the running server.", namespace=namespace, registry=self.registry
        )
        self.build.info({"version": _version(), "python": platform.python_version()})
        self._routes: dict[str, RouteMetrics] = {}

    def route(self, template: str) -> RouteMetrics:
        """The metrics of a route template (one object per template)."""
        found = self._routes.get(template)
        if found is None:
            found = self._routes[template] = RouteMetrics(self.stats, template)
            if template != UNMATCHED_ROUTE:
                self.stats.declare(route=template)
        return found

    def operation(self, name: str) -> OperationMetrics:
        """Outcome counters of one store operation."""
        return OperationMetrics(self.stats, name)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric of this app."""
        return generate_latest(self.registry)
