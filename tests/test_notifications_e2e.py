"""MQTT notifications end to end: real server processes, the real CLI, a real Mosquitto.

One server publishes (``MQTT_URL`` set, under the old service's variable names); writes made by
a second server process on the same store and by ``iot-config put`` are announced by it too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_broker import PASSWORD, USER, Mosquitto, Received, subscribed, wait_for
from support import JSON_HEADERS, PYTHON, ServerProcess, call, child_env, put_body

from iot_config_core import MacAddress, open_store
from iot_config_server.notifications import COMPAT_TOPIC

PREFIX = "e2e/devices"
API_MAC = MacAddress.parse("02:00:00:00:03:01")
REPLICA_MAC = MacAddress.parse("02:00:00:00:03:02")
CLI_MAC = MacAddress.parse("02:00:00:00:03:03")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto")
    yield server
    server.stop()


def put(server: ServerProcess, mac: MacAddress, content: dict[str, object]) -> str:
    status, headers, answer = server.request(
        "PUT", f"/api/configs/{mac}", put_body(content), JSON_HEADERS
    )
    assert status == 200, answer
    return headers["etag"].strip('"')


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "iot_config_server.cli", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def announced(messages: list[Received], mac: MacAddress) -> list[str]:
    return [m.json()["etag"] for m in messages if m.json()["mac_address"] == str(mac)]


def test_every_writer_is_announced_by_the_publishing_server(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    mqtt_env = {
        "MQTT_URL": broker.url,  # the old service's names
        "MQTT_USERNAME": USER,
        "MQTT_PASSWORD": PASSWORD,
        "IOT_CONFIG_MQTT_TOPIC_PREFIX": PREFIX,
        "IOT_CONFIG_MQTT_POLL_SECONDS": "0.3",
    }
    with (
        subscribed(broker, COMPAT_TOPIC, f"{PREFIX}/+") as sub,
        ServerProcess(
            "--store", str(store), log_path=tmp_path / "publisher.log", env=mqtt_env
        ) as publisher,
        ServerProcess("--store", str(store), log_path=tmp_path / "replica.log") as replica,
    ):
        own = put(publisher, API_MAC, {"deviceName": "api"})
        wait_for(lambda: announced(sub.on(COMPAT_TOPIC), API_MAC) == [own], "the API write")

        other = put(replica, REPLICA_MAC, {"deviceName": "replica"})
        wait_for(lambda: announced(sub.on(COMPAT_TOPIC), REPLICA_MAC) == [other], "the replica's")

        doc = tmp_path / "doc.json"
        doc.write_text('{"deviceName": "cli"}')
        written = cli("put", str(CLI_MAC), str(doc), "--store", str(store))
        assert written.returncode == 0, written.stderr
        etag = written.stdout.strip()
        wait_for(lambda: announced(sub.on(COMPAT_TOPIC), CLI_MAC) == [etag], "the CLI write")

        def retained_topics() -> dict[MacAddress, list[Any]]:
            return {m: [r.json() for r in sub.on(f"{PREFIX}/{m}")] for m in macs}

        macs = (API_MAC, REPLICA_MAC, CLI_MAC)
        expected = {m: [{"etag": v}] for m, v in zip(macs, (own, other, etag), strict=True)}
        wait_for(lambda: retained_topics() == expected, "the retained topics")

        status, _, metrics = call(publisher.port, "GET", "/metrics")
        assert status == 200
        text = metrics.decode()
        assert "iot_config_mqtt_connected 1.0" in text
        assert 'iot_config_mqtt_publishes_total{outcome="ok",topic="compat"} 3.0' in text
    assert publisher.log().count("MQTT notifications to mqtt://127.0.0.1") == 1
    assert "MQTT notifications off (MQTT_URL is not set)" in replica.log()
    assert "mqtt" not in replica.log().lower().replace("mqtt notifications off (mqtt_url", "")


def publishers(server: ServerProcess) -> list[int]:
    """The pids of the publisher processes the server's supervisor started, in order."""
    started = re.findall(r"MQTT publisher process started \(pid (\d+)\)", server.log())
    return [int(pid) for pid in started]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_one_publisher_process_beside_the_workers_restarted_and_stopped_with_the_server(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    mqtt_env = {
        "IOT_CONFIG_MQTT_URL": broker.url,
        "IOT_CONFIG_MQTT_USERNAME": USER,
        "IOT_CONFIG_MQTT_PASSWORD": PASSWORD,
        "IOT_CONFIG_MQTT_TOPIC_PREFIX": PREFIX,
        "IOT_CONFIG_MQTT_POLL_SECONDS": "30",  # own writes only: the hand-off, not the poll
    }
    with (
        subscribed(broker, COMPAT_TOPIC) as sub,
        ServerProcess(
            "--store", str(store), "--workers", "2", log_path=tmp_path / "server.log", env=mqtt_env
        ) as server,
    ):
        first = put(server, API_MAC, {"n": 1})
        wait_for(lambda: announced(sub.on(COMPAT_TOPIC), API_MAC) == [first], "the first PUT")
        (crashed,) = publishers(server)
        os.kill(crashed, signal.SIGKILL)  # an OOM kill of the publisher alone
        wait_for(lambda: gone(crashed), "the publisher's death")
        second = put(server, API_MAC, {"n": 2})  # waits in the hand-off for the new publisher
        wait_for(lambda: len(publishers(server)) == 2, "the restart")
        wait_for(
            lambda: announced(sub.on(COMPAT_TOPIC), API_MAC) == [first, second], "the second PUT"
        )

        def metrics() -> str:
            return call(server.port, "GET", "/metrics")[2].decode()

        # The dead publisher's gauges are gone, its counters are kept; any worker answers.
        wait_for(lambda: "iot_config_mqtt_connected 1.0" in metrics(), "the connection gauge")
        # Counted on the broker's PUBACK, which may come after the subscriber got the message.
        ok = 'iot_config_mqtt_publishes_total{outcome="ok",topic="compat"} 2.0'
        wait_for(lambda: ok in metrics(), "both compat publishes counted")
        restarted = publishers(server)[1]
        assert server.terminate() == 0
    wait_for(lambda: gone(restarted), "the publisher to stop with the server")
    log = server.log()
    # Once per publisher process, not once per worker.
    assert log.count("MQTT notifications to mqtt://127.0.0.1") == 2
    assert f"the MQTT publisher process (pid {crashed}) exited with status -9" in log
    assert "Traceback" not in log


def test_watch_prints_one_line_per_change_until_interrupted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    writer = open_store(str(store), create=True)
    first = writer.put(API_MAC, {"n": 1}).etag
    with subprocess.Popen(
        [
            *(PYTHON, "-m", "iot_config_server.cli", "watch", "--json", "--initial"),
            *("--interval", "0.1", "--store", str(store)),
        ],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    ) as watcher:
        try:
            assert watcher.stdout is not None
            assert json.loads(watcher.stdout.readline()) == {
                "mac_address": str(API_MAC),
                "filename": API_MAC.file_name,
                "etag": first,
            }
            second = writer.put(API_MAC, {"n": 2}).etag
            assert json.loads(watcher.stdout.readline())["etag"] == second
            writer.delete(API_MAC)
            assert json.loads(watcher.stdout.readline())["etag"] is None
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(60) == 0
        finally:
            if watcher.poll() is None:
                watcher.kill()
