"""MQTT notifications against a real Mosquitto broker: the app and the notifier in-process.

Server processes, the CLI and several replicas are in ``test_notifications_e2e.py``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import webtest
from mqtt_broker import (
    PASSWORD,
    USER,
    Mosquitto,
    Received,
    Subscriber,
    make_certificates,
    subscribed,
    wait_for,
)

from iot_config_core import ConfigStore, MacAddress, open_store
from iot_config_server.app import METRICS_CONFIG_KEY, create_app
from iot_config_server.broker import BrokerAddress
from iot_config_server.notifications import COMPAT_TOPIC, MqttOptions, Notifier
from iot_config_server.settings import Settings

PREFIX = "test/devices"
MAC = MacAddress.parse("02:00:00:00:01:01")
OTHER = MacAddress.parse("02:00:00:00:01:02")
POLL = 0.2


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix per test, so retained messages of one test never reach another."""
    return f"{PREFIX}/{re.sub(r'[^a-z0-9]+', '-', request.node.name.lower())[:60]}"


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    return open_store(str(tmp_path / "store"), create=True)


def options(broker: Mosquitto, prefix: str, **changes: Any) -> MqttOptions:
    base = MqttOptions(
        BrokerAddress.parse(broker.url),
        USER,
        PASSWORD,
        None if broker.tls is None else str(broker.tls.ca),
        prefix,
        POLL,
    )
    return attrs.evolve(base, **changes)


@attrs.define
class Running:
    notifier: Notifier
    app: webtest.TestApp

    def put(self, mac: MacAddress, content: dict[str, object]) -> str:
        answer = self.app.put_json(f"/api/configs/{mac}", {"content": content})
        assert answer.status_int == 200
        return str(answer.headers["ETag"]).strip('"')

    def metric(self, name: str) -> float:
        text = self.app.get("/metrics").text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0


@pytest.fixture
def start(store: ConfigStore) -> Iterator[Callable[..., Running]]:
    started: list[Notifier] = []

    def run(opts: MqttOptions, on: ConfigStore | None = None) -> Running:
        target = store if on is None else on
        notifier = Notifier(target, opts)
        app = create_app(target, Settings(), on_change=notifier.announce)
        notifier.start(app.config[METRICS_CONFIG_KEY])
        started.append(notifier)
        return Running(notifier, webtest.TestApp(app))

    yield run
    for notifier in started:
        notifier.stop()


def compat(subscriber: Subscriber, mac: MacAddress) -> list[str]:
    """The ETags announced for ``mac`` on the old service's topic, in order."""
    return [
        m.json()["etag"] for m in subscriber.on(COMPAT_TOPIC) if m.json()["mac_address"] == str(mac)
    ]


def retained(broker: Mosquitto, prefix: str) -> dict[MacAddress, str]:
    """What a device subscribing now is told: every retained ``<prefix>/<mac>`` message.

    The broker sends retained messages right after the subscription; a message this subscriber
    publishes afterwards on the same filter arrives after them, so when it is back, all are in.
    """
    with subscribed(broker, f"{prefix}/+") as sub:
        sub.client.publish(f"{prefix}/end-of-retained", b"", qos=1)
        wait_for(lambda: sub.on(f"{prefix}/end-of-retained"), "the end of the retained messages")
        found = {}
        for message in sub.messages:
            mac = MacAddress.from_file_name(message.topic.rpartition("/")[2] + ".json")
            if mac is not None and message.retain and message.payload:
                found[mac] = message.json()["etag"]
        return found


def last(subscriber: Subscriber, topic: str) -> Received | None:
    messages = subscriber.on(topic)
    return messages[-1] if messages else None


def test_an_api_put_reaches_both_topics(
    broker: Mosquitto, prefix: str, start: Callable[..., Running]
) -> None:
    with subscribed(broker, COMPAT_TOPIC, f"{prefix}/+") as sub:
        running = start(options(broker, prefix))
        etag = running.put(MAC, {"deviceName": "kitchen"})
        wait_for(lambda: compat(sub, MAC), "the compat announcement")
        device = wait_for(lambda: last(sub, f"{prefix}/{MAC}"), "the device topic")
        (announcement,) = sub.on(COMPAT_TOPIC)
        assert announcement.json() == {
            "filename": f"{MAC}.json",
            "mac_address": str(MAC),
            "etag": etag,
        }
        assert not announcement.retain
        assert device.json() == {"etag": etag}
        wait_for(
            lambda: (
                running.metric('iot_config_mqtt_publishes_total{outcome="ok",topic="device"}') >= 1
            ),
            "metric",
        )
        assert running.metric("iot_config_mqtt_connected") == 1


def test_retained_version_survives_a_reconnect_and_a_delete_clears_it(
    broker: Mosquitto, prefix: str, start: Callable[..., Running]
) -> None:
    running = start(options(broker, prefix))
    etag = running.put(MAC, {"n": 1})
    topic = f"{prefix}/{MAC}"
    with subscribed(broker, topic) as watcher:
        wait_for(lambda: (m := last(watcher, topic)) is not None and m.payload, "publish")
    with subscribed(broker, topic) as late:  # a device waking from deep sleep
        message = wait_for(lambda: last(late, topic), "the retained message")
        assert message.retain
        assert message.json() == {"etag": etag}
    with subscribed(broker, COMPAT_TOPIC, topic) as sub:
        assert running.app.delete(f"/api/configs/{MAC}").status_int == 204
        wait_for(lambda: (m := last(sub, topic)) is not None and m.payload == b"", "the clearing")
        assert compat(sub, MAC) == []  # deletes are not announced on the old topic
    assert retained(broker, prefix).get(MAC) is None


def test_writes_by_others_are_announced_within_the_interval(
    broker: Mosquitto,
    prefix: str,
    start: Callable[..., Running],
    store: ConfigStore,
    tmp_path: Path,
) -> None:
    start(options(broker, prefix))
    with subscribed(broker, COMPAT_TOPIC, f"{prefix}/+") as sub:
        other = open_store(str(tmp_path / "store"))  # the CLI, a script, another replica
        first = other.put(OTHER, {"n": 1}).etag
        wait_for(lambda: compat(sub, OTHER) == [first], "the first change")
        (tmp_path / "store" / OTHER.file_name).write_text('{"n": 2}\n')  # by hand
        second = other.etag(OTHER)
        wait_for(lambda: compat(sub, OTHER) == [first, second], "the hand edit")
        wait_for(
            lambda: (m := last(sub, f"{prefix}/{OTHER}")) and m.json()["etag"] == second, "retained"
        )
    del store


def test_changes_while_the_broker_is_down_arrive_after_it_is_back(
    tmp_path: Path, prefix: str, start: Callable[..., Running], store: ConfigStore
) -> None:
    broker = Mosquitto(tmp_path / "own-broker")
    try:
        running = start(options(broker, prefix))
        macs = [MacAddress(0x020000000200 + n) for n in range(5)]
        before = {mac: running.put(mac, {"n": 0}) for mac in macs}
        with subscribed(broker, f"{prefix}/+") as sub:
            wait_for(
                lambda: all(
                    (m := last(sub, f"{prefix}/{mac}")) and m.json()["etag"] == e
                    for mac, e in before.items()
                ),
                "the first versions",
            )
        broker.stop()
        wait_for(lambda: running.metric("iot_config_mqtt_connected") == 0, "the disconnect")
        latest: dict[MacAddress, str | None] = {}
        for n in range(1, 4):  # several versions per device: only the latest matters
            for mac in macs[:4]:
                latest[mac] = running.put(mac, {"n": n})
        assert running.app.delete(f"/api/configs/{macs[4]}").status_int == 204
        latest[macs[4]] = None
        wait_for(lambda: running.metric("iot_config_mqtt_pending_announcements") == 5, "5 pending")
        broker.start()
        with subscribed(broker, COMPAT_TOPIC, f"{prefix}/+") as sub:

            def caught_up() -> bool:
                for mac, etag in latest.items():
                    message = last(sub, f"{prefix}/{mac}")
                    if etag is None:
                        if message is not None and message.payload:
                            return False
                    elif message is None or message.json() != {"etag": etag}:
                        return False
                return True

            wait_for(caught_up, "every device's latest version after the restart")
            wait_for(
                lambda: all(compat(sub, mac)[-1:] == [latest[mac]] for mac in macs[:4]), "compat"
            )
        assert running.metric("iot_config_mqtt_pending_announcements") == 0
    finally:
        broker.stop()


def test_wrong_credentials_are_one_log_line_and_a_metric_never_a_failed_call(
    broker: Mosquitto, prefix: str, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "iot_config_server.notifications")
    running = start(options(broker, prefix, password="wrong"))
    failures = 'iot_config_mqtt_connect_failures_total{reason="not_authorized"}'
    wait_for(lambda: running.metric(failures) >= 2, "two refused attempts")
    for n in range(3):
        running.put(MAC, {"n": n})
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "refused the connection" in errors[0]
    assert "MQTT_PASSWORD" in errors[0]
    assert running.metric("iot_config_mqtt_connected") == 0
    assert running.metric("iot_config_mqtt_pending_announcements") == 1


def test_tls_with_a_certificate_made_here(
    tmp_path: Path, prefix: str, start: Callable[..., Running]
) -> None:
    certs = make_certificates(tmp_path / "certs")
    broker = Mosquitto(tmp_path / "tls-broker", tls=certs)
    try:
        assert broker.url.startswith("mqtts://")
        with subscribed(broker, COMPAT_TOPIC) as sub:
            running = start(options(broker, prefix))
            etag = running.put(MAC, {"n": 1})
            wait_for(lambda: compat(sub, MAC) == [etag], "the announcement over TLS")
    finally:
        broker.stop()


def test_a_restarted_publisher_announces_what_changed_meanwhile_and_nothing_else(
    broker: Mosquitto, prefix: str, start: Callable[..., Running], store: ConfigStore
) -> None:
    first = start(options(broker, prefix))
    kept = first.put(MAC, {"n": 1})
    doomed = first.put(OTHER, {"n": 1})
    wait_for(lambda: retained(broker, prefix) == {MAC: kept, OTHER: doomed}, "retained")
    first.notifier.stop()
    changed = store.put(MAC, {"n": 2}).etag  # while no publisher runs
    store.delete(OTHER)
    new = MacAddress.parse("02:00:00:00:01:03")
    created = store.put(new, {"n": 1}).etag
    with subscribed(broker, COMPAT_TOPIC) as sub:
        start(options(broker, prefix))  # resyncs against what the retained topics hold
        wait_for(lambda: retained(broker, prefix) == {MAC: changed, new: created}, "the resync")
        wait_for(lambda: compat(sub, MAC) == [changed] and compat(sub, new) == [created], "compat")
        assert compat(sub, OTHER) == []


def test_the_first_start_fills_retained_topics_without_announcing_the_fleet(
    broker: Mosquitto, prefix: str, start: Callable[..., Running], store: ConfigStore
) -> None:
    existing = {MAC: store.put(MAC, {"n": 1}).etag, OTHER: store.put(OTHER, {"n": 1}).etag}
    with subscribed(broker, COMPAT_TOPIC) as sub:
        running = start(options(broker, prefix))
        wait_for(lambda: retained(broker, prefix) == existing, "the retained topics")
        assert sub.on(COMPAT_TOPIC) == []  # old devices are not all told to refetch at once
        etag = running.put(MAC, {"n": 2})
        wait_for(lambda: compat(sub, MAC) == [etag], "the first real change")


def test_two_publishers_on_one_store_announce_a_change_at_most_once_each(
    broker: Mosquitto, prefix: str, start: Callable[..., Running], tmp_path: Path
) -> None:
    replica_a = start(options(broker, prefix))
    start(options(broker, prefix), open_store(str(tmp_path / "store")))
    writer = open_store(str(tmp_path / "store"))
    with subscribed(broker, COMPAT_TOPIC, f"{prefix}/+") as sub:
        own = replica_a.put(MAC, {"n": 1})  # announced at once by A; B finds it on its poll
        foreign = writer.put(OTHER, {"n": 1}).etag  # found by both polls
        wait_for(lambda: compat(sub, MAC) and compat(sub, OTHER), "both announcements")
        wait_for(lambda: retained(broker, prefix) == {MAC: own, OTHER: foreign}, "retained")
        marker = MacAddress.parse("02:00:00:00:01:09")
        done = replica_a.put(marker, {"n": 1})  # after it, every earlier duplicate is in
        wait_for(lambda: compat(sub, marker) == [done], "the marker")
        assert set(compat(sub, MAC)) == {own}
        assert set(compat(sub, OTHER)) == {foreign}
        assert len(compat(sub, MAC)) <= 2
        assert len(compat(sub, OTHER)) <= 2


def test_the_acl_of_docs_security_lets_each_device_read_only_its_own_topic(
    tmp_path: Path, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    """The Mosquitto ACL documented in docs/security.md, with the server's and devices' users."""
    security = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    (acl,) = [block for block in security.split("```") if "pattern read" in block]
    broker = Mosquitto(
        tmp_path / "acl-broker",
        users={"iot-config-server": "server-pw", str(MAC): "token-1", str(OTHER): "token-2"},
        acl=acl,
    )
    caplog.set_level(logging.WARNING, "iot_config_server.notifications")
    prefix = "iotsupport/devices"
    try:
        server = options(broker, prefix, username="iot-config-server", password="server-pw")
        running = start(server)
        running.put(OTHER, {"n": 1})
        mine = running.put(MAC, {"n": 1})
        with subscribed(
            broker, f"{prefix}/+", COMPAT_TOPIC, user=str(MAC), password="token-1"
        ) as sub:
            message = wait_for(lambda: last(sub, f"{prefix}/{MAC}"), "its own retained topic")
            assert message.json() == {"etag": mine}
            later = running.put(MAC, {"n": 2})
            # [-1]: the announcement of `mine` arrives too when the server's first sync with
            # the broker ended only after this subscription.
            wait_for(lambda: compat(sub, MAC)[-1:] == [later], "the old topic, readable by devices")
            wait_for(lambda: sub.on(f"{prefix}/{MAC}")[-1].json() == {"etag": later}, "update")
            assert sub.on(f"{prefix}/{OTHER}") == []  # never another device's topic
        # The server read its retained topics back (no sync time-out) and was refused nothing.
        assert (
            running.metric('iot_config_mqtt_publishes_total{outcome="refused",topic="compat"}') == 0
        )
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    finally:
        broker.stop()
