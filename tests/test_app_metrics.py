"""Prometheus metrics: route-template labels, operation outcomes, config count, per-app registry."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import webtest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from support import ServerProcess, call

from iot_config_core import ConfigStore, open_store
from iot_config_server import Settings, create_app, metrics

MAC = "aa-bb-cc-dd-ee-ff"


def samples(app: webtest.TestApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = app.get("/metrics")
    assert response.content_type == "text/plain"
    result = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def requests(app: webtest.TestApp, method: str, route: str, status: int) -> float:
    key = (
        "iot_config_http_requests_total",
        (("method", method), ("route", route), ("status", str(status))),
    )
    return samples(app).get(key, 0.0)


def test_requests_are_labelled_by_route_template(app: webtest.TestApp) -> None:
    app.put_json("/api/configs/AA:BB:CC:DD:EE:FF", {"content": {}})
    app.get(f"/esp32/config/{MAC}.json")
    app.get("/esp32/config/00:11:22:33:44:55.json", status=404)
    app.get("/esp32/config/aabbccddeeff.json")
    app.get("/no/such/path/aa-bb", status=404)
    app.request("/api/configs", method="POST", status=405)
    assert requests(app, "PUT", "/api/configs/<mac>", 200) == 1
    assert requests(app, "GET", "/esp32/config/<mac>.json", 200) == 2
    assert requests(app, "GET", "/esp32/config/<mac>.json", 404) == 1
    assert requests(app, "GET", "<unmatched>", 404) == 1
    assert requests(app, "POST", "<unmatched>", 405) == 1
    text = app.get("/metrics").text
    for raw in ("aa-bb-cc-dd-ee-ff", "AA:BB", "00:11:22", "aabbccddeeff", "/no/such"):
        assert raw not in text


def test_durations_by_template(app: webtest.TestApp) -> None:
    for _ in range(3):
        app.get("/api/health/live")
    values = samples(app)
    count = values[
        ("iot_config_http_request_duration_seconds_count", (("route", "/api/health/live"),))
    ]
    assert count == 3
    total = values[
        ("iot_config_http_request_duration_seconds_sum", (("route", "/api/health/live"),))
    ]
    assert 0 < total < 3


def test_operations_by_outcome_and_store_errors(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    store = open_store(str(root), create=True)
    app = webtest.TestApp(create_app(store, Settings()))
    app.put_json(f"/api/configs/{MAC}", {"content": {}})
    app.put_json(f"/api/configs/{MAC}", {"content": {}}, headers={"If-None-Match": "*"}, status=412)
    app.get(f"/esp32/config/{MAC}.json")
    app.get("/esp32/config/00-00-00-00-00-01.json", status=404)
    root.rename(tmp_path / "gone")
    app.get(f"/esp32/config/{MAC}.json", status=503)
    values = samples(app)

    def ops(operation: str, outcome: str) -> float:
        key = (
            "iot_config_config_operations_total",
            (("operation", operation), ("outcome", outcome)),
        )
        return values.get(key, 0.0)

    assert ops("put", "ok") == 1
    assert ops("put", "precondition_failed") == 1
    assert ops("get_raw", "ok") == 1
    assert ops("get_raw", "not_found") == 1
    assert ops("get_raw", "store_unavailable") == 1
    assert values[("iot_config_store_errors_total", (("operation", "get_raw"),))] == 1
    assert values[("iot_config_store_errors_total", (("operation", "put"),))] == 0


@pytest.fixture
def patient_scrapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrapes that wait for the count however loaded the machine (the default is short)."""
    monkeypatch.setattr(metrics, "SCRAPE_WAIT_SECONDS", 30.0)


@pytest.mark.usefixtures("patient_scrapes")
def test_config_count_is_the_store_now(
    app: webtest.TestApp, store: ConfigStore, tmp_path: Path
) -> None:
    """Writes by anyone (this app, another replica, the CLI, by hand) show in the next scrape."""
    assert samples(app)[("iot_config_configs", ())] == 0
    for i in range(3):
        store.put(f"00-00-00-00-00-0{i}", {})  # another writer on the same directory
    assert samples(app)[("iot_config_configs", ())] == 3
    (tmp_path / "configs" / "00-00-00-00-00-09.json").write_text('{"by": "hand"}')
    (tmp_path / "configs" / "00-00-00-00-00-08.json").write_text("{not json")
    (tmp_path / "configs" / "notes.txt").write_text("not a config")
    assert samples(app)[("iot_config_configs", ())] == 4
    (tmp_path / "configs" / "00-00-00-00-00-00.json").unlink()
    assert samples(app)[("iot_config_configs", ())] == 3


@pytest.mark.usefixtures("patient_scrapes")
def test_unreadable_store_leaves_the_count_out_and_the_scrape_working(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    store = open_store(str(root), create=True)
    store.put(MAC, {})
    app = webtest.TestApp(create_app(store, Settings()))
    assert samples(app)[("iot_config_configs", ())] == 1
    root.rename(tmp_path / "gone")
    values = samples(app)
    assert ("iot_config_configs", ()) not in values
    assert ("iot_config_build_info", ()) not in values  # build info has labels, still there
    assert any(name == "iot_config_build_info" for name, _ in values)


def test_build_info(app: webtest.TestApp) -> None:
    info = [k for k in samples(app) if k[0] == "iot_config_build_info"]
    assert len(info) == 1
    labels = dict(info[0][1])
    assert set(labels) == {"version", "python"}


def test_metrics_stay_separate_between_apps(store: ConfigStore, tmp_path: Path) -> None:
    first = webtest.TestApp(create_app(store, Settings()))
    second = webtest.TestApp(create_app(open_store("memory://other", create=True), Settings()))
    first.get("/api/health/live")
    first.get("/api/health/live")
    second.get("/api/health/live")
    assert requests(first, "GET", "/api/health/live", 200) == 2
    assert requests(second, "GET", "/api/health/live", 200) == 1


def test_counts_from_many_threads_add_up(app: webtest.TestApp) -> None:
    def poll() -> None:
        for _ in range(3):
            app.get("/api/health/live")

    threads = [threading.Thread(target=poll) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert requests(app, "GET", "/api/health/live", 200) == 40 * 3


def test_invented_methods_do_not_add_series(store: ConfigStore) -> None:
    app = webtest.TestApp(create_app(store, Settings()), lint=False)  # lint refuses odd methods
    for method in ("FOO", "BAR", "X-" + "Y" * 30):
        app.request("/api/configs", method=method, expect_errors=True)
        app.request("/nowhere", method=method, expect_errors=True)
    text = app.get("/metrics").text
    assert "FOO" not in text
    assert "BAR" not in text
    assert requests(app, "OTHER", "<unmatched>", 405) == 3
    assert requests(app, "OTHER", "<unmatched>", 404) == 3


# -- several worker processes ---------------------------------------------------------------------

DEVICE_ROUTE = (("method", "GET"), ("route", "/esp32/config/<mac>.json"), ("status", "200"))


def scraped_device_gets(port: int) -> float:
    status, _, body = call(port, "GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            if sample.name == "iot_config_http_requests_total" and labels == DEVICE_ROUTE:
                return sample.value
    return 0.0


def worker_pids(supervisor: int) -> set[int]:
    pids: set[int] = set()
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        pids.update(int(pid) for pid in (task / "children").read_text().split())
    return pids


def get_devices(port: int, count: int) -> None:
    for _ in range(count):  # a new connection each: the kernel spreads them over the workers
        assert call(port, "GET", f"/esp32/config/{MAC}.json")[0] == 200


def counted_by(directory: Path, pid: int) -> float:
    """The device GETs one worker counted, from its own file alone (none before it has one)."""
    if not (directory / f"counter_{pid}.db").exists():  # a worker still building its app
        return 0.0
    alone = directory.parent / f"alone-{pid}"
    alone.mkdir()
    shutil.copy(directory / f"counter_{pid}.db", alone)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
    labels = dict(DEVICE_ROUTE)
    value = registry.get_sample_value("iot_config_http_requests_total", labels)
    shutil.rmtree(alone)
    return value or 0.0


def wait_for_workers(supervisor: int, count: int, unlike: set[int]) -> set[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = worker_pids(supervisor)
        if len(pids) == count and not pids & unlike:
            return pids
        time.sleep(0.05)
    pytest.fail(f"workers of {supervisor}: {worker_pids(supervisor)}")


@pytest.mark.slow
def test_two_workers_scrape_exact_totals_and_a_killed_worker_loses_nothing(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    open_store(str(store), create=True).put(MAC, {})
    files = tmp_path / "metrics"
    files.mkdir()
    (files / "counter_1.db").write_bytes(b"left by an earlier run")  # removed at start
    env = {"PROMETHEUS_MULTIPROC_DIR": str(files)}
    args = ["--store", str(store), "--workers", "2"]
    with ServerProcess(*args, log_path=tmp_path / "server.log", env=env) as server:
        port = server.port
        workers = wait_for_workers(server.proc.pid, 2, set())
        sent = 0
        # Until both workers served some (bounded; a worker imports the app after it is forked,
        # which takes a while on a busy machine): scrapes must then agree whichever answers.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(counted_by(files, pid) for pid in workers):
            get_devices(port, 10)
            sent += 10
        assert all(counted_by(files, pid) for pid in workers)
        assert [scraped_device_gets(port) for _ in range(8)] == [sent] * 8

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        respawned = wait_for_workers(server.proc.pid, 2, {victim})
        get_devices(port, 10)
        assert [scraped_device_gets(port) for _ in range(8)] == [sent + 10] * 8
        assert sum(counted_by(files, pid) for pid in workers | respawned) == sent + 10
    assert not (files / "counter_1.db").exists()


@pytest.mark.slow
def test_two_workers_without_a_configured_directory(tmp_path: Path) -> None:
    store = tmp_path / "store"
    open_store(str(store), create=True).put(MAC, {})
    args = ["--store", str(store), "--workers", "2"]
    with ServerProcess(*args, log_path=tmp_path / "server.log") as server:
        port = server.port
        wait_for_workers(server.proc.pid, 2, set())
        get_devices(port, 30)
        assert [scraped_device_gets(port) for _ in range(8)] == [30.0] * 8


def test_a_hung_store_holds_neither_the_scrape_nor_more_than_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    calls: list[int] = []

    def count() -> int:
        calls.append(1)
        if len(calls) == 2:  # the store hangs during the second scrape's count
            release.wait(30)
        return len(calls)

    fresh = metrics.FreshValue(count, "a test count")
    monkeypatch.setattr(metrics, "SCRAPE_WAIT_SECONDS", 30.0)
    assert fresh() == 1
    monkeypatch.setattr(metrics, "SCRAPE_WAIT_SECONDS", 0.05)
    started = time.monotonic()
    assert [fresh(), fresh(), fresh()] == [1, 1, 1]  # the last count, without waiting long
    assert time.monotonic() - started < 10
    assert len(calls) == 2  # the scrapes shared the one hung computation
    release.set()
    monkeypatch.setattr(metrics, "SCRAPE_WAIT_SECONDS", 30.0)
    deadline = time.monotonic() + 30
    while fresh() != 3 and time.monotonic() < deadline:  # the hung one ends, the next is fresh
        pass
    assert fresh() in (3, 4)


def test_a_metric_file_still_being_created_is_skipped_not_fatal(tmp_path: Path) -> None:
    """A starting process creates its file empty and sizes it a moment later (a startup race).

    Reading the empty file raised in prometheus_client's collector: a worker registering it then
    failed to start, and a scrape at that moment failed. Now that file waits for the next scrape.
    """
    files = tmp_path / "metrics"
    files.mkdir()
    counting = (  # another process, counting in its file there
        "from prometheus_client import Counter\n"
        "Counter('iot_config_mqtt_publishes', 'Publishes.').inc(3)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(files)}
    subprocess.run([sys.executable, "-c", counting], env=env, check=True, timeout=60)
    (files / "counter_200.db").touch()  # a process that has just created its file
    collected = metrics.AppMetrics(lambda: 0)
    collected.include_files(str(files))
    text = collected.exposition().decode()
    assert "iot_config_mqtt_publishes_total 3.0" in text
