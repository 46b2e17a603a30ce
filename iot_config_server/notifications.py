"""MQTT notifications: devices learn at once that their config changed.

Two topics, QoS 1, MQTT 5:

- ``iotsupport/updates/configs``, the old service's topic, not retained:
  ``{"filename": "<mac>.json", "mac_address": "<mac>", "etag": "<etag>"}`` for each new version
  of a config. Deletes are not announced there, as before: a device would restart for what is
  usually a mistake about to be undone.
- ``<prefix>/<mac>``, retained: ``{"etag": "<etag>"}``, the current version, so a device waking
  from deep sleep learns from its subscription alone whether its copy is current. A delete
  clears it (an empty retained message).

**What is announced.** This process's own writes are queued by `Notifier.announce` (the PUT and
DELETE handlers call it) and go out at once; every other writer (another replica, the CLI, a
script, a hand edit) is found by the core's change feed, which lists the store every
``mqtt_poll_seconds``. The queue holds one entry per device, so announcements coalesce (it is
bounded by the fleet, not the write rate). An own write's entry is only the MAC: the version is
read from the store when published, so announcements of concurrent writes can never leave an
older version announced last. A listed change carries the version its listing saw and is
published without a read: if the store has moved on since, the next poll reports the newer one.
A poll costs a metadata scan plus a read and a hash of each changed file, and a parse only of
versions this process has not read itself: the version of each own write read for its
announcement is vouched for to the feed (`ChangeFeed.vouch`), so each own write is read once.

**The broker's retained topics are the record of what devices were told.** The publisher
subscribes to ``<prefix>/+`` (without the echo of its own publishes, which it records when it
sends them) and mirrors them. After every (re)connect it reads them all back
(until a marker it publishes after subscribing returns, which the broker delivers after the
retained ones) and compares them with a full listing: that resync announces whatever changed
while the broker or this process was down, and nothing twice. When the broker holds no retained
message at all and this process has announced nothing yet -- the first start with MQTT, or a
broker that lost its state while every publisher was down too -- the retained topics are filled
in but the configs that existed when this process started are not announced on the old topic
(that would make every old device refetch, or restart, at once).

**Several publishers** (replicas) on one store and broker: each sees the
others' retained messages, so it publishes only what the broker does not hold yet. Two announce
the same change only when both find it before either's message has come back from the broker
(their polls within one listing plus a broker round trip of each other; own writes are announced
by the writer at once), so a change is announced at most once per publisher, and a duplicate
carries the same ETag: a device that asks with ``If-None-Match`` gets a 304.
``tests/benchmarks/bench_mqtt.py`` counts them.

**The API never waits for MQTT.** `Notifier.announce` only adds a MAC to a dict; the store reads
and the publishing happen on the notifier's own thread, the network I/O on paho's.
``iot-config serve`` runs the notifier in a process of its own beside the workers, which hand it
their writes (`iot_config_server.publisher`), so publishing never takes a request-serving
process's GIL; another WSGI server runs one in each process that builds the app
(`iot_config_server.wsgi`).
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Collection
from typing import Any, Final

import attrs
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Counter, Gauge

from iot_config_core import (
    Change,
    ChangeFeed,
    ConfigError,
    ConfigStore,
    MacAddress,
)

from .broker import BrokerAddress
from .metrics import AppMetrics, GaugeMode
from .settings import Settings

__all__ = ["COMPAT_TOPIC", "MqttOptions", "Notifier", "NotifierMetrics", "notifier_from_settings"]

log = logging.getLogger(__name__)

#: The old service's topic, announcing each new version of a config (not deletes).
COMPAT_TOPIC: Final = "iotsupport/updates/configs"
#: Label values of the publish counter's ``topic``: the old topic, and the per-device ones.
COMPAT: Final = "compat"
DEVICE: Final = "device"
#: Publishes handed to paho and not yet acknowledged, at most (paho itself sends 20 at a time).
MAX_OUTSTANDING = 256
#: Devices the announcer takes from the queue at a time.
BATCH = 64
#: After a batch, the next one starts this much later unless a full `BATCH` is queued: under a
#: write load, changes go out several at a time instead of one wake-up and paho round each (a
#: fifth to a third less publisher CPU per change, for a few ms of latency). The first change
#: after a quiet spell goes out at once.
PACE_SECONDS = 0.01
#: How long to wait for the retained messages after subscribing before syncing without them.
SYNC_TIMEOUT_SECONDS = 15.0
#: Reconnect back-off, seconds: short, so a restarted broker hears the backlog soon.
RECONNECT_DELAY = (1, 10)
KEEPALIVE_SECONDS = 30


def _client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:20] or "host"
    return f"iot-config-{host}-{os.getpid()}-{secrets.token_hex(3)}"


@attrs.frozen
class MqttOptions:
    """Where and what to publish; built from `Settings` by `from_settings`."""

    broker: BrokerAddress
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    ca_file: str | None = None
    prefix: str = "iotsupport/devices"
    poll_seconds: float = 5.0
    client_id: str = attrs.Factory(_client_id)

    @classmethod
    def from_settings(cls, settings: Settings) -> MqttOptions | None:
        """The options ``settings`` give, or ``None`` when ``mqtt_url`` is unset."""
        broker = settings.mqtt_broker
        if broker is None:
            return None
        return cls(
            broker,
            settings.mqtt_username,
            settings.mqtt_password,
            settings.mqtt_ca_file,
            settings.mqtt_topic_prefix,
            settings.mqtt_poll_seconds,
        )

    def device_topic(self, mac: MacAddress) -> str:
        """The retained topic of one device."""
        return f"{self.prefix}/{mac}"


class NotifierMetrics:
    """Publishes by topic and outcome, failed connections, connection state, pending devices.

    They live where the app keeps its own (`AppMetrics.counter`, `AppMetrics.gauge`): with
    several processes (workers, or the publisher process of ``iot-config serve``) in the
    multiprocess files, summed at scrape time; the connection gauge is then the highest, the
    pending count the sum, over the live processes that publish. Without an app (``None``), they
    are counted detached from any registry, or in those files if the process writes there.
    """

    def __init__(self, app: AppMetrics | None) -> None:
        def counter(name: str, documentation: str, labels: tuple[str, ...]) -> Counter:
            if app is not None:
                return app.counter(name, documentation, labels)
            return Counter(name, documentation, labels, namespace="iot_config", registry=None)

        def gauge(name: str, documentation: str, mode: GaugeMode) -> Gauge:
            if app is not None:
                return app.gauge(name, documentation, mode)
            return Gauge(
                name, documentation, namespace="iot_config", registry=None, multiprocess_mode=mode
            )

        publishes = counter(
            "mqtt_publishes",
            "MQTT publishes by topic (compat, device) and outcome (ok, refused by the broker, "
            "error handing it to the client).",
            ("topic", "outcome"),
        )
        # Children looked up once: a publish is counted on paho's busy thread.
        self._publishes = {
            (topic, outcome): publishes.labels(topic, outcome)
            for topic in (COMPAT, DEVICE)
            for outcome in ("ok", "refused", "error")
        }
        self._failures = counter(
            "mqtt_connect_failures", "Failed attempts to connect to the MQTT broker.", ("reason",)
        )
        self._connected = gauge(
            "mqtt_connected", "1 while connected to the MQTT broker.", "livemax"
        )
        self._pending = gauge(
            "mqtt_pending_announcements",
            "Devices whose change is waiting to be published (at most one entry per device).",
            "livesum",
        )
        self._connected.set(0)
        self._pending.set(0)

    def published(self, topic: str, outcome: str) -> None:
        """Count one publish on ``topic`` (compat or device) by outcome."""
        self._publishes[topic, outcome].inc()

    def connect_failed(self, reason: str) -> None:
        """Count one failed connection attempt by reason (a small fixed set of labels)."""
        self._failures.labels(reason).inc()
        self.connection(up=False)

    def connection(self, *, up: bool) -> None:
        """Record whether the client is connected now."""
        self._connected.set(1 if up else 0)

    def pending(self, count: int) -> None:
        """Record how many devices wait to be announced now."""
        self._pending.set(count)


@attrs.frozen
class _Sent:
    """A publish waiting for the broker's acknowledgement."""

    kind: str
    mac: MacAddress
    etag: str | None


def _label(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def _network_reason(exc: BaseException | None) -> tuple[str, str]:
    """A metric label and a human reason for a failed connection attempt."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls_error", f"TLS failed: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused", "connection refused (is the broker running?)"
    if isinstance(exc, TimeoutError):
        return "timeout", "timed out"
    if isinstance(exc, socket.gaierror):
        return "unknown_host", f"cannot resolve the host: {exc}"
    return "network_error", f"{exc or 'network error'}"


class Notifier:
    """Announces config changes of one store on one MQTT broker (see the module docstring).

    `start` it once; `announce` from any thread; `stop` on shutdown (also run at exit).
    """

    def __init__(self, store: ConfigStore, options: MqttOptions) -> None:
        self._store = store
        self._options = options
        self.metrics = NotifierMetrics(None)  # until `start` is given the app's
        self._feed = ChangeFeed(store)
        self._wake = threading.Condition(threading.Lock())
        # Guarded by _wake: the queue, the broker mirror, what devices were told, in-flight ids.
        # MAC -> the version a listing saw, or None: read the store when publishing.
        self._pending: dict[MacAddress, Change | None] = {}
        self._announced: set[MacAddress] = set()  # by `announce` since the last listing began
        self._retained: dict[MacAddress, str] = {}
        self._told: dict[MacAddress, str] = {}
        self._outstanding: dict[int, _Sent] = {}
        self._early_acks: dict[int, ReasonCode] = {}
        self._ready = False
        self._resync = False
        self._syncing_since: float | None = None
        self._session = 0
        self._marker = ""
        self._marker_mid = -1
        self._stopping = False
        self._hold_until = 0.0  # after a store failure, nothing is published before this
        self._next_batch = 0.0  # `PACE_SECONDS` after the last batch began
        # The fleet as first listed, for the first-start rule; dropped after the first resync.
        self._fleet_at_start: dict[MacAddress, str] | None = None
        # Own writes before the first resync: changes to announce, even if that first listing
        # already saw them (a publisher process may start after its server answers requests).
        self._own_before_sync: set[MacAddress] | None = set()
        # Log each distinct trouble once (paho's thread / the announcer's thread respectively).
        self._connection_trouble: str | None = None
        self._store_trouble: str | None = None
        self._refusals: set[tuple[str, str]] = set()
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="mqtt-announcer", daemon=True)

    # -- public ---------------------------------------------------------------------------------

    def start(self, metrics: AppMetrics | None = None) -> None:
        """Connect in the background and start announcing; never blocks on the broker.

        ``metrics``: the app's, so that ``/metrics`` shows the notifier's too.
        """
        if metrics is not None:
            self.metrics = NotifierMetrics(metrics)
        options = self._options
        log.info(
            "MQTT notifications to %s%s: %s and %s/<mac> (retained); other writers' changes "
            "found every %g s",
            options.broker,
            f" as {options.username}" if options.username else "",
            COMPAT_TOPIC,
            options.prefix,
            options.poll_seconds,
        )
        self._client.connect_async(
            options.broker.host, options.broker.port, keepalive=KEEPALIVE_SECONDS, clean_start=True
        )
        self._client.loop_start()
        self._thread.start()
        atexit.register(self.stop)

    def announce(self, mac: MacAddress) -> None:
        """Queue an announcement of ``mac``'s current version (cheap: no I/O, no waiting)."""
        self.announce_all((mac,))

    def announce_all(self, macs: Collection[MacAddress]) -> None:
        """`announce` each of ``macs``, taking the lock and waking the announcer once for all."""
        with self._wake:
            pending = self._pending
            for mac in macs:
                pending[mac] = None
            self.metrics.pending(len(pending))
            self._announced.update(macs)
            if self._own_before_sync is not None:
                self._own_before_sync.update(macs)
            self._wake.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing and disconnect (what is still pending is found again by the resync)."""
        with self._wake:
            if self._stopping:
                return
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self.metrics.connection(up=False)

    # -- paho's thread --------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        options = self._options
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=mqtt.MQTTv5,
        )
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        if options.broker.tls:
            client.tls_set_context(ssl.create_default_context(cafile=options.ca_file))
        client.reconnect_delay_set(*RECONNECT_DELAY)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _trouble(self, label: str, message: str, *, count: bool = True) -> None:
        """Count a failed connection and log it, once until the reason changes."""
        if count:
            self.metrics.connect_failed(label)
        self.metrics.connection(up=False)
        if message != self._connection_trouble:
            self._connection_trouble = message
            log.error(
                "MQTT broker %s: %s; retrying, announcements are kept until it accepts us",
                self._options.broker,
                message,
            )

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # Called inside paho's `except OSError`, so the exception is still the current one.
        label, message = _network_reason(sys.exception())
        self._trouble(label, message)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            hint = ""
            if reason.value in (134, 135):  # bad user name or password; not authorized
                hint = " (check MQTT_USERNAME and MQTT_PASSWORD)"
            self._trouble(_label(reason.getName()), f"refused the connection: {reason}{hint}")
            return
        with self._wake:
            self._session += 1
            marker = f"{self._options.prefix}/sync-{self._options.client_id}-{self._session}"
            self._marker = marker
            self._retained = {}
            self._ready = False
            self._syncing_since = time.monotonic()
            pending = len(self._pending)
        self.metrics.connection(up=True)
        if self._connection_trouble is not None or self._session == 1:
            log.info(
                "connected to MQTT broker %s; %d announcements pending",
                self._options.broker,
                pending,
            )
        self._connection_trouble = None
        # No Local: our own publishes are recorded when sent, so the broker need not echo them
        # (halves the traffic per announcement). The marker has a subscription of its own.
        client.subscribe(
            [
                (f"{self._options.prefix}/+", SubscribeOptions(qos=1, noLocal=True)),
                (marker, SubscribeOptions(qos=1)),
            ]
        )

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._wake:
            was_ready = self._ready
            self._ready = False
            self._syncing_since = None
            stopping = self._stopping
        if stopping:
            return
        if was_ready:
            self._trouble("disconnected", f"connection lost ({reason})", count=False)
        else:
            self.metrics.connection(up=False)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if any(reason.is_failure for reason in reasons):
            log.warning(
                "MQTT broker %s refused the subscription to %s/+ (%s): without the retained "
                "record every reconnect republishes every device's topic",
                self._options.broker,
                self._options.prefix,
                reasons[0],
            )
            self._synced()
            return
        with self._wake:
            marker = self._marker
        # Delivered after the retained messages of the subscription just acknowledged.
        info = client.publish(marker, b"", qos=1)
        with self._wake:
            self._marker_mid = info.mid

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        with self._wake:
            marker = self._marker
        if topic == marker:
            self._synced()
            return
        mac = MacAddress.from_file_name(topic.rpartition("/")[2] + ".json")
        if mac is None:  # another publisher's marker, or something that is not ours
            return
        payload = bytes(message.payload)
        etag: str | None = None
        if payload:
            try:
                etag = json.loads(payload)["etag"]
            except (ValueError, KeyError, TypeError):
                return
            if not isinstance(etag, str):
                return
        with self._wake:
            if etag is None:
                self._retained.pop(mac, None)
            else:
                self._retained[mac] = etag
                self._told[mac] = etag  # whoever retained it announced it

    def _synced(self) -> None:
        with self._wake:
            self._ready = True
            self._resync = True
            self._syncing_since = None
            self._wake.notify()

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._wake:
            if mid == self._marker_mid:
                return
            sent = self._outstanding.pop(mid, None)
            if sent is None:  # acknowledged before `_send` could record it
                self._early_acks[mid] = reason
                return
            self._settle(sent, reason)

    def _settle(self, sent: _Sent, reason: ReasonCode) -> None:
        """Count an acknowledged publish; undo what a refused one promised (lock held)."""
        if self._pending and len(self._outstanding) == MAX_OUTSTANDING - 1:
            self._wake.notify()  # the announcer waits for room (else an ack is no news to it)
        if not reason.is_failure:
            self.metrics.published(sent.kind, "ok")
            return
        self.metrics.published(sent.kind, "refused")
        record = self._told if sent.kind == COMPAT else self._retained
        if sent.etag is not None and record.get(sent.mac) == sent.etag:
            del record[sent.mac]
        key = (sent.kind, str(reason))
        if key not in self._refusals:  # e.g. an ACL: retrying at once would not help
            self._refusals.add(key)
            log.error(
                "MQTT broker %s refused a publish on the %s topic: %s",
                self._options.broker,
                sent.kind,
                reason,
            )

    # -- the announcer's thread -----------------------------------------------------------------

    def _run(self) -> None:
        interval = self._options.poll_seconds
        if self._poll():
            self._fleet_at_start = dict(self._feed.state)
        next_poll = time.monotonic() + interval
        while True:
            with self._wake:
                while not self._stopping:
                    now = time.monotonic()
                    if now >= next_poll or self._ready_to_work():
                        break
                    since = self._syncing_since
                    if since is not None and now - since > SYNC_TIMEOUT_SECONDS:
                        log.warning("no end of the retained messages from the broker: syncing")
                        self._ready, self._resync, self._syncing_since = True, True, None
                        break
                    # Woken by announce() and paho's callbacks; at least once a second anyway,
                    # and when the pace lets the next batch start.
                    timeout = min(next_poll - now, 1.0)
                    if self._pending and now < self._next_batch:
                        timeout = min(timeout, self._next_batch - now)
                    self._wake.wait(timeout)
                if self._stopping:
                    return
                resync = self._resync and self._ready and time.monotonic() >= self._hold_until
                if resync:
                    self._resync = False
            if resync and not self._resync_with_broker():
                with self._wake:
                    self._resync = True
            if time.monotonic() >= next_poll:
                self._poll()
                next_poll = time.monotonic() + interval
            self._publish_pending()

    def _ready_to_work(self) -> bool:
        """Whether there is publishing to do now (lock held)."""
        now = time.monotonic()
        if not self._ready or now < self._hold_until:
            return False
        if self._resync:
            return True
        pending = len(self._pending)
        return (
            pending > 0
            and len(self._outstanding) < MAX_OUTSTANDING
            and (now >= self._next_batch or pending >= BATCH)
        )

    def _store_failed(self, exc: ConfigError | None) -> None:
        """Log a store failure once; hold publishing back until the next poll interval."""
        if exc is not None:
            self._hold_until = time.monotonic() + self._options.poll_seconds
        message = None if exc is None else exc.message
        if message != self._store_trouble:
            self._store_trouble = message
            if exc is not None:
                log.warning("MQTT notifications wait for the store: %s", exc.message)

    def _poll(self) -> bool:
        """One listing: queue every change found; False when the store failed."""
        with self._wake:
            self._announced = set()
        try:
            changes = self._feed.poll()
        except ConfigError as exc:
            self._store_failed(exc)
            return False
        self._store_failed(None)
        self._queue_listed(changes)
        return True

    def _queue_listed(self, changes: list[Change]) -> None:
        """Queue changes a listing found, with the version it saw (lock not held).

        That version is published as it is, without reading the store again: if the store has
        moved on since, the next poll reports the newer one. A device this process announced
        itself since the listing began is left to that announcement, which is at least as new.
        """
        with self._wake:
            own = self._announced
            self._announced = set()
            for change in changes:
                if change.mac_address not in own:
                    self._pending[change.mac_address] = change
            self.metrics.pending(len(self._pending))

    def _resync_with_broker(self) -> bool:
        """Queue every device whose retained topic differs from the store; False if it failed."""
        with self._wake:
            mirror = dict(self._retained)
            first = not mirror and not self._told
            self._announced = set()
        try:
            changes = self._feed.resync(mirror)
        except ConfigError as exc:
            self._store_failed(exc)
            return False
        with self._wake:
            if first:
                known = self._fleet_at_start
                fleet = self._feed.state if known is None else known
                own = self._own_before_sync or set()
                self._told.update((mac, etag) for mac, etag in fleet.items() if mac not in own)
                if self._told:
                    log.info(
                        "the broker holds no %s/<mac> topics yet: publishing them for %d "
                        "devices, and announcing on %s only what changes from now on",
                        self._options.prefix,
                        len(self._told),
                        COMPAT_TOPIC,
                    )
            self._fleet_at_start = None
            self._own_before_sync = None
        self._queue_listed(changes)
        return True

    def _publish_pending(self) -> None:
        """Publish queued devices while connected, synced and under the outstanding limit.

        Devices are taken a batch at a time (`BATCH`): one lock round and one pending-gauge
        update per batch instead of per device, which matters when a backlog builds up.
        """
        while True:
            with self._wake:
                if self._stopping or not self._ready_to_work() or self._resync:
                    return
                pending = self._pending
                self._next_batch = time.monotonic() + PACE_SECONDS
                room = min(BATCH, MAX_OUTSTANDING - len(self._outstanding), len(pending))
                batch = [(mac, pending[mac]) for mac in itertools.islice(pending, room)]
                for mac, _ in batch:  # the oldest first: a busy device cannot starve the rest
                    del pending[mac]
                self.metrics.pending(len(pending))
            # Own writes are read now, so announcements of concurrent writes can never leave an
            # older version announced last: a write handed off after its device left the queue
            # queues it again and is read again. The bytes' ETag is what a device polling gets.
            # A listed change is published with the version its listing saw. The feed is
            # told of each version read here, so its next poll neither reads nor parses it.
            versions: list[tuple[MacAddress, Change | None, str | None]] = []
            for index, (mac, listed) in enumerate(batch):
                if listed is not None:
                    versions.append((mac, listed, listed.etag))
                    continue
                try:
                    current = self._store.etag(mac)
                except ConfigError as exc:
                    self._store_failed(exc)
                    with self._wake:  # retried once the hold is over
                        self._requeue(batch[index:])
                    break
                if current is not None:
                    self._feed.vouch(mac, current)
                versions.append((mac, None, current))
            sends: list[tuple[_Sent, str, bytes, bool]] = []
            with self._wake:
                if not self._ready:
                    self._requeue([(mac, listed) for mac, listed, _ in versions])
                    return
                for mac, _, current in versions:
                    sends.extend(self._sends_for(mac, current))
            for sent, topic, payload, retain in sends:
                self._send(sent, topic, payload, retain=retain)
            if len(versions) < len(batch):
                return

    def _requeue(self, batch: list[tuple[MacAddress, Change | None]]) -> None:
        """Put devices taken from the queue back, unless queued again meanwhile (lock held)."""
        for mac, listed in batch:
            self._pending.setdefault(mac, listed)
        self.metrics.pending(len(self._pending))

    def _sends_for(
        self, mac: MacAddress, current: str | None
    ) -> list[tuple[_Sent, str, bytes, bool]]:
        """The publishes telling devices that ``mac`` is at ``current``, recorded (lock held)."""
        sends: list[tuple[_Sent, str, bytes, bool]] = []
        if current is None:
            self._told.pop(mac, None)
        elif self._told.get(mac) != current:
            self._told[mac] = current
            body = {"filename": mac.file_name, "mac_address": str(mac), "etag": current}
            sends.append(
                (_Sent(COMPAT, mac, current), COMPAT_TOPIC, json.dumps(body).encode(), False)
            )
        if self._retained.get(mac) != current:
            if current is None:
                del self._retained[mac]
                payload = b""
            else:
                self._retained[mac] = current
                payload = json.dumps({"etag": current}).encode()
            sends.append(
                (_Sent(DEVICE, mac, current), self._options.device_topic(mac), payload, True)
            )
        return sends

    def _send(self, sent: _Sent, topic: str, payload: bytes, *, retain: bool) -> None:
        # No MQTT 5 properties (content type): building them measured as a large share of a
        # publish, and both payloads are self-evidently JSON.
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        # NO_CONN: paho keeps the message and sends it after reconnecting.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.metrics.published(sent.kind, "error")
            log.error("could not hand a publish on %s to the MQTT client: %s", topic, info.rc)
            with self._wake:  # forget the promise: the next change or resync retries it
                record = self._told if sent.kind == COMPAT else self._retained
                if sent.etag is not None and record.get(sent.mac) == sent.etag:
                    del record[sent.mac]
            return
        with self._wake:
            reason = self._early_acks.pop(info.mid, None)
            if reason is None:
                self._outstanding[info.mid] = sent
            else:
                self._settle(sent, reason)


def notifier_from_settings(store: ConfigStore, settings: Settings) -> Notifier | None:
    """A notifier for ``store`` when ``settings`` name a broker (not started), else ``None``."""
    options = MqttOptions.from_settings(settings)
    if options is None:
        return None
    return Notifier(store, options)
