"""Prometheus metrics: route-template labels, operation outcomes, config count, per-app registry."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families

from iot_config_core import ConfigStore, open_store
from iot_config_server import Settings, create_app
from iot_config_server.app import METRICS_CONFIG_KEY

MAC = "aa-bb-cc-dd-ee-ff"


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    return open_store(str(tmp_path / "configs"), create=True)


@pytest.fixture
def app(store: ConfigStore) -> webtest.TestApp:
    return webtest.TestApp(create_app(store, Settings()))


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
    assert math.isnan(values[("iot_config_configs", ())])  # the store cannot say: unknown


def test_config_count_is_the_store_at_scrape_time(app: webtest.TestApp, store: ConfigStore) -> None:
    for i in range(3):
        store.put(f"00-00-00-00-00-0{i}", {})
    # Writes nobody listed (another replica, the CLI) are counted: the scrape scans metadata.
    assert samples(app)[("iot_config_configs", ())] == 3
    store.put("00-00-00-00-00-09", {})
    assert samples(app)[("iot_config_configs", ())] == 4


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


def test_counts_from_many_threads_add_up_and_finished_threads_are_folded(
    app: webtest.TestApp,
) -> None:
    """A server that starts a thread per request must not grow the per-thread shards forever."""

    def poll() -> None:
        for _ in range(3):
            app.get("/api/health/live")

    for _ in range(5):
        threads = [threading.Thread(target=poll) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert requests(app, "GET", "/api/health/live", 200) == 5 * 40 * 3
    collector = app.app.config[METRICS_CONFIG_KEY].stats
    assert collector.shard_count() <= collector.FOLD_THRESHOLD + 1


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
