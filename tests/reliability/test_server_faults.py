"""Storage faults under a running server process, and a slow store.

Whatever happens to the store, the server keeps answering: writes get a 503 ``STORE_UNAVAILABLE``
with the error shape, readiness turns 503 (so a load balancer stops routing writes here), liveness
stays 200 (so nobody restarts a healthy process over a storage outage), stored bytes are untouched,
and everything works again when the fault is gone, without a restart.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Figure
from .support import (
    JSON_HEADERS,
    ServerProcess,
    call,
    put_body,
    remount,
    scaled,
    snapshot,
    temp_files,
    tmpfs,
)
from .test_store_faults import _fill

MACS = [f"02-00-00-00-01-{i:02x}" for i in range(6)]


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "mnt"
    with tmpfs(mount, "4m"):
        (mount / "configs").mkdir()
        yield mount


@pytest.fixture
def server(mounted: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(mounted / "configs", tmp_path / "server.log")
    for i, mac in enumerate(MACS):
        status = proc.request("PUT", f"/api/configs/{mac}", put_body({"n": i}), JSON_HEADERS)[0]
        assert status in (200, 201)
    yield proc
    assert proc.stop() in (0, -15), proc.log()[-2000:]


def _assert_outage(server: ServerProcess, *, reads_work: bool, deletes_fail: bool = True) -> int:
    """Every write answers 503 STORE_UNAVAILABLE; ready 503; live and metrics 200."""
    writes: list[tuple[str, str, bytes | None]] = [
        ("PUT", f"/api/configs/{MACS[0]}", put_body({"n": "changed"})),
        ("PUT", "/api/configs/02-00-00-00-01-ff", put_body({"n": "new"})),
        ("PUT", f"/api/configs/{MACS[3]}", put_body({"n": "big", "pad": "x" * 100_000})),
    ]
    if deletes_fail:
        writes.append(("DELETE", f"/api/configs/{MACS[1]}", None))
    for method, path, body in writes:
        status, headers, data = server.request(method, path, body, JSON_HEADERS if body else {})
        assert status == 503, (method, path, status, data[:300])
        error = json.loads(data)
        assert error["code"] == "STORE_UNAVAILABLE"
        assert error["correlationId"] == headers["x-request-id"]
        assert headers.get("retry-after")
    assert server.request("GET", "/api/health/ready")[0] == 503
    assert server.request("GET", "/api/health")[0] == 503
    assert server.request("GET", "/api/health/live")[0] == 200
    assert server.request("GET", "/metrics")[0] == 200
    device = server.request("GET", f"/esp32/config/{MACS[2]}.json")[0]
    assert device == (200 if reads_work else 503)
    return len(writes)


def _assert_recovered(server: ServerProcess) -> None:
    assert server.request("GET", "/api/health/ready")[0] == 200
    status = server.request(
        "PUT", f"/api/configs/{MACS[0]}", put_body({"n": "after"}), JSON_HEADERS
    )[0]
    assert status == 200
    assert server.request("DELETE", f"/api/configs/{MACS[1]}")[0] == 204
    assert server.request("GET", f"/esp32/config/{MACS[1]}.json")[0] == 404
    assert json.loads(server.request("GET", f"/api/configs/{MACS[0]}")[2])["content"] == {
        "n": "after"
    }


def test_read_only_store_under_running_server(
    server: ServerProcess, mounted: Path, figure: Figure
) -> None:
    before = snapshot(mounted / "configs")
    remount(mounted, "ro")
    try:
        n = _assert_outage(server, reads_work=True)
        assert snapshot(mounted / "configs") == before
    finally:
        remount(mounted, "rw")
    assert temp_files(mounted / "configs") == []
    _assert_recovered(server)
    figure("writes answered 503 while read-only, then recovered without restart", n)


def test_full_store_under_running_server(
    server: ServerProcess, mounted: Path, figure: Figure
) -> None:
    before = snapshot(mounted / "configs")
    filler = _fill(mounted)
    try:
        # Deleting needs no space, so a full disk only stops PUTs.
        n = _assert_outage(server, reads_work=True, deletes_fail=False)
        assert snapshot(mounted / "configs") == before
        assert temp_files(mounted / "configs") == []
    finally:
        filler.unlink()
    _assert_recovered(server)
    figure("writes answered 503 while full, then recovered without restart", n)


def test_store_removed_under_running_server(
    server: ServerProcess, mounted: Path, figure: Figure
) -> None:
    root = mounted / "configs"
    before = snapshot(root)
    os.rename(root, mounted / "away")
    try:
        n = _assert_outage(server, reads_work=False)
        assert server.request("GET", "/api/configs")[0] == 503
        assert not root.exists(), "the server re-created the store root by itself"
    finally:
        os.rename(mounted / "away", root)
    assert snapshot(root) == before
    _assert_recovered(server)
    figure("writes answered 503 while root missing, then recovered without restart", n)


def _latencies(port: int, path: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        status = call(port, "GET", path, timeout=10)[0]
        out.append(time.perf_counter() - started)
        assert status == 200
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _flood(
    port: int, stop: threading.Event, paths: list[str], errors: list[str], shed: list[int]
) -> None:
    """Poll a device path until stopped; a 503 STORE_BUSY is load shed, any other 5xx an error."""
    while not stop.is_set():
        try:
            status, _, body = call(port, "GET", paths[0], timeout=60)
            if status == 503 and json.loads(body).get("code") == "STORE_BUSY":
                shed.append(status)
            elif status >= 500:
                errors.append(f"{status} {body[:120]!r}")
        except OSError as exc:
            errors.append(repr(exc))


# Four slow requests per worker thread: far more than the threads, as when a CephFS mount hangs.
# The store gate keeps two threads free of store calls and sheds the excess with 503 STORE_BUSY.
SATURATED = pytest.param(4, id="saturated")


@pytest.mark.parametrize("in_flight_per_thread", [pytest.param(0.5, id="below-pool"), SATURATED])
def test_slow_store_does_not_block_liveness_or_metrics(
    in_flight_per_thread: float, tmp_path: Path, figure: Figure
) -> None:
    store = tmp_path / "configs"
    store.mkdir()
    fast = ServerProcess(store, tmp_path / "fast.log")
    try:
        fast.request("PUT", f"/api/configs/{MACS[0]}", put_body({"n": 0}), JSON_HEADERS)
    finally:
        fast.stop()
    delay = 0.3
    slow = ServerProcess(store, tmp_path / "slow.log", slow=delay)
    threads = 8  # the server's default worker threads
    flooders = max(1, int(threads * in_flight_per_thread))
    # Each sample may wait behind the slow requests when the pool is saturated: keep them few.
    samples = int(scaled(10, 100) if in_flight_per_thread < 1 else scaled(3, 30))
    stop = threading.Event()
    errors: list[str] = []
    shed: list[int] = []
    workers: list[threading.Thread] = []
    try:
        baseline = {p: _latencies(slow.port, p, samples) for p in ("/api/health/live", "/metrics")}
        workers += [
            threading.Thread(
                target=_flood,
                args=(slow.port, stop, [f"/esp32/config/{MACS[0]}.json"], errors, shed),
                daemon=True,
            )
            for _ in range(flooders)
        ]
        for worker in workers:
            worker.start()
        time.sleep(delay * 2)  # let the slow requests pile up
        loaded = {p: _latencies(slow.port, p, samples) for p in ("/api/health/live", "/metrics")}
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        slow.stop()
    for path, values in loaded.items():
        med0, med1 = statistics.median(baseline[path]), statistics.median(values)
        p99 = _p(values, 0.99)
        figure(
            f"{path} with {flooders} slow ({delay}s) requests in flight: p50/p99 ms",
            f"{med1 * 1000:.1f}/{p99 * 1000:.1f} (idle p50 {med0 * 1000:.1f})",
        )
        assert p99 < delay, f"{path} waited behind the slow store: p99 {p99:.3f} s"
    figure(f"device requests shed (503 STORE_BUSY) with {flooders} in flight", len(shed))
    assert not errors, errors[:5]
    if flooders <= threads - 2:
        assert not shed  # below the gate's slots nothing is shed
