"""Prometheus metrics of one app, on stock prometheus_client types.

Label values are route templates (``/api/configs/<mac>``), operation names and codes, never raw
paths or MACs, so the series count is bounded by the route table. Each label combination's child
is looked up once and kept, so counting a request is a dict lookup and the child's increment.

One process (tests, embedding, ``serve --workers 1``): every metric lives in the app's own
registry, so two apps in one process stay apart.

Several worker processes (``serve --workers N``): each worker counts in its own files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and a scrape, whichever
worker answers it, sums the files of every worker that ever ran, so totals are exact and a worker
that dies and is respawned loses nothing it counted. The directory is made empty when the server
starts (`multiprocess_directory`). The config count and build info are not kept in files: the
worker answering the scrape computes them (the store is the same for every worker), so there is
no per-process gauge to aggregate and nothing to clean up when a worker exits (prometheus_client's
``mark_process_dead`` only removes files of live gauges, which only the MQTT publisher process
keeps, and its supervisor removes them when it dies).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from iot_config_core import __version__

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROCESS_ENV",
    "UNMATCHED_ROUTE",
    "AppMetrics",
    "FreshValue",
    "OperationMetrics",
    "RouteMetrics",
    "multiprocess_directory",
    "use_file_backed_values",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The variable prometheus_client's multiprocess mode reads: the directory of per-process files.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The route label of requests that matched no route (404/405), so typos cannot add series.
UNMATCHED_ROUTE = "<unmatched>"
NAMESPACE = "iot_config"
#: How a gauge's values of several live processes combine (dead processes' files are removed).
GaugeMode = Literal["livemax", "livesum"]
log = logging.getLogger(__name__)

#: How long a scrape waits for the config count; a slower (or hung) store gets the last count.
#: Below Prometheus' default 10 s scrape timeout by far, and short enough that a hung store
#: leaves ``/metrics`` answering quickly.
SCRAPE_WAIT_SECONDS = 0.1
# Fine buckets at the low end: device polls answer from cache, far faster than writes that fsync.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@contextlib.contextmanager
def multiprocess_directory(workers: int) -> Iterator[str | None]:
    """Per-process metric files for a server with ``workers`` processes, for the server's life.

    Entered by the server's supervisor before any worker starts: workers (and the MQTT
    publisher process, when there is one) inherit the variable and count in files there.
    With one worker and no directory configured nothing is set up: metrics stay in memory.
    An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used (for any number of workers) after
    removing the metric files a previous run left; otherwise a private
    temporary directory is made and removed afterwards. Either way a restarted server starts
    counting from zero, as Prometheus expects of a new process.
    """
    configured = os.environ.get(MULTIPROCESS_ENV)
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        for stale in Path(configured).glob("*.db"):
            stale.unlink(missing_ok=True)
        yield configured
        return
    if workers < 2:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="iot-config-metrics-")
    os.environ[MULTIPROCESS_ENV] = directory
    try:
        yield directory
    finally:
        del os.environ[MULTIPROCESS_ENV]
        shutil.rmtree(directory, ignore_errors=True)


class _ProcessFiles(Collector):
    """The metric files of every process counting in ``directory``, summed at each scrape.

    prometheus_client's `MultiProcessCollector`, minus one failure: a process that is starting
    (a worker, a restarted MQTT publisher) creates its file empty and sizes it a moment later,
    and reading that empty file raises, which failed the scrape, or, at registration, the
    worker's start. A file without its header yet holds no values: it is skipped until the next
    scrape. ``describe`` is empty so registering reads no file at all.
    """

    HEADER_BYTES = 8  # the used-length field every file starts with

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        ready = []
        with os.scandir(self._directory) as entries:
            for entry in entries:
                if not entry.name.endswith(".db"):
                    continue
                with contextlib.suppress(FileNotFoundError):  # a dead process's file removed
                    if entry.stat().st_size >= self.HEADER_BYTES:
                        ready.append(entry.path)
        metrics: Iterator[Metric] = iter(
            MultiProcessCollector.merge(ready, accumulate=True)  # type: ignore[no-untyped-call]
        )
        return metrics


def use_file_backed_values() -> None:
    """Make metrics created from now on in this process keep their values in files.

    prometheus_client picks its value class when it is first imported, and Granian forks workers
    from a supervisor that may have imported it before the directory was set: choose again here.
    """
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class FreshValue:
    """A value computed anew for each scrape, in the background, waited for a bounded time.

    Computing it reads the store, which may hang (a stalled mount): the scrape waits at most
    `SCRAPE_WAIT_SECONDS`, then answers with the last value computed (None before the first, or
    while the store fails). At most one computation runs at a time, so a hung store holds one
    thread, not one per scrape; a scrape arriving while one runs waits only for what is left of
    that one's wait.
    """

    def __init__(self, compute: Callable[[], int], what: str) -> None:
        self._compute = compute
        self._what = what
        self._value: int | None = None
        self._failing = False
        self._lock = threading.Lock()
        self._running: threading.Event | None = None
        self._deadline = 0.0  # when scrapes stop waiting for the computation that runs

    def __call__(self) -> int | None:
        """The value computed for this scrape, or the last one if that takes too long."""
        with self._lock:
            done = self._running
            if done is None:
                done = self._running = threading.Event()
                self._deadline = time.monotonic() + SCRAPE_WAIT_SECONDS
                threading.Thread(
                    target=self._refresh, args=(done,), name=f"metrics: {self._what}", daemon=True
                ).start()
            # A computation that already outlived its wait is stuck in the store: later scrapes
            # answer at once with the last value instead of each waiting the full time again.
            wait = self._deadline - time.monotonic()
        if wait > 0:
            done.wait(wait)
        return self._value

    def _refresh(self, done: threading.Event) -> None:
        try:
            self._value = self._compute()
            self._failing = False
        except Exception as exc:  # logged once per outage (readiness reports it as well)
            self._value = None
            if not self._failing:
                log.warning("cannot compute %s for /metrics: %s", self._what, exc)
            self._failing = True
        finally:
            with self._lock:
                self._running = None
            done.set()


class RouteMetrics:
    """The request counter and duration histogram of one route template."""

    def __init__(self, requests: Counter, durations: Histogram | None, route: str) -> None:
        self._requests = requests
        self.template = route
        # Created up front so a route's histogram is visible (at zero) before its first request.
        self._duration = None if durations is None else durations.labels(route)
        self._children: dict[tuple[str, int], Counter] = {}

    def _counter(self, method: str, status: int) -> Counter:
        child = self._children.get((method, status))
        if child is None:  # a race creates the same child twice: labels() returns one object
            child = self._requests.labels(method, self.template, str(status))
            self._children[(method, status)] = child
        return child

    def count(self, method: str, status: int) -> None:
        """Count an answer without timing it (requests that matched no route)."""
        self._counter(method, status).inc()

    def observe(self, method: str, status: int, seconds: float) -> None:
        """Count an answer and record how long it took."""
        self._counter(method, status).inc()
        if self._duration is not None:
            self._duration.observe(seconds)


class OperationMetrics:
    """Outcome counters of one store operation (``get_raw``, ``put``, ...)."""

    def __init__(self, operations: Counter, store_errors: Counter, operation: str) -> None:
        self._operations = operations
        self._operation = operation
        self._ok = operations.labels(operation, "ok")
        self._store_errors = store_errors.labels(operation)  # visible at zero from the start
        self._failures: dict[str, Counter] = {}

    def ok(self) -> None:
        """Count a successful operation."""
        self._ok.inc()

    def failed(self, code: str) -> None:
        """Count a failed operation by the core error code (``NOT_FOUND``, ...)."""
        child = self._failures.get(code)
        if child is None:
            child = self._failures[code] = self._operations.labels(self._operation, code.lower())
        child.inc()
        if code == "STORE_UNAVAILABLE":
            self._store_errors.inc()


class _ScrapeTimeMetrics(Collector):
    """The config count and build info: computed by the process answering the scrape."""

    def __init__(self, config_count: Callable[[], int | None]) -> None:
        self._config_count = config_count
        self._build = {"version": __version__, "python": platform.python_version()}

    def collect(self) -> Iterator[Metric]:
        configs = GaugeMetricFamily(
            f"{NAMESPACE}_configs", "Valid configs in the store when scraped."
        )
        count = self._config_count()
        if count is not None:  # an unreadable store has no count (its errors are counted)
            configs.add_metric([], float(count))
        yield configs
        yield InfoMetricFamily(
            f"{NAMESPACE}_build", "Version of the running server.", value=self._build
        )


class AppMetrics:
    """All metrics of one app.

    ``config_count`` is called at every scrape: the number of valid configs in the store now, or
    None when it cannot be had.
    """

    def __init__(self, config_count: Callable[[], int | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        files = os.environ.get(MULTIPROCESS_ENV)
        counted_in: CollectorRegistry | None = self.registry
        if files:
            use_file_backed_values()
            self.registry.register(_ProcessFiles(files))
            counted_in = None  # the values live in the files the collector above sums
        self._requests = Counter(
            "http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            namespace=NAMESPACE,
            registry=counted_in,
        )
        self._durations = Histogram(
            "http_request_duration_seconds",
            "Time to produce an answer, by route template.",
            ["route"],
            namespace=NAMESPACE,
            buckets=DURATION_BUCKETS,
            registry=counted_in,
        )
        self._operations = Counter(
            "config_operations",
            "Store operations, by operation and outcome (ok or the error code).",
            ["operation", "outcome"],
            namespace=NAMESPACE,
            registry=counted_in,
        )
        self._store_errors = Counter(
            "store_errors",
            "Store failures (backend unavailable), by operation.",
            ["operation"],
            namespace=NAMESPACE,
            registry=counted_in,
        )
        cache = Counter(
            "device_cache_lookups",
            "Lookups in the cache of validated documents that answers device polls, by result "
            "(hit: answered from memory after one stat; miss: the file was read).",
            ["result"],
            namespace=NAMESPACE,
            registry=counted_in,
        )
        self.device_cache_hit = cache.labels("hit").inc
        self.device_cache_miss = cache.labels("miss").inc
        self.registry.register(_ScrapeTimeMetrics(config_count))
        self._routes: dict[str, RouteMetrics] = {}
        self._counted_in = counted_in

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        """Another counter of this app, kept where its request counters are (one or N workers)."""
        return Counter(name, documentation, labels, namespace=NAMESPACE, registry=self._counted_in)

    def include_files(self, directory: str) -> None:
        """Also report the metrics another process counts in ``directory`` (multiprocess files).

        For the MQTT publisher process of a server whose one worker keeps its own metrics in
        memory: values in files cost a request more than values in memory.
        """
        self.registry.register(_ProcessFiles(directory))

    def gauge(self, name: str, documentation: str, mode: GaugeMode) -> Gauge:
        """A gauge of this app; ``mode`` combines the values of several processes (``livemax``)."""
        return Gauge(
            name,
            documentation,
            namespace=NAMESPACE,
            registry=self._counted_in,
            multiprocess_mode=mode,
        )

    def route(self, template: str) -> RouteMetrics:
        """The metrics of a route template (one object per template)."""
        found = self._routes.get(template)
        if found is None:
            durations = None if template == UNMATCHED_ROUTE else self._durations
            found = self._routes[template] = RouteMetrics(self._requests, durations, template)
        return found

    def operation(self, name: str) -> OperationMetrics:
        """Outcome counters of one store operation."""
        return OperationMetrics(self._operations, self._store_errors, name)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric of this app (of all workers, if several)."""
        return generate_latest(self.registry)
