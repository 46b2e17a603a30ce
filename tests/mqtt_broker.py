"""A real Mosquitto broker for tests (Debian's ``mosquitto``), and a subscriber that records.

The broker listens on 127.0.0.1 only, with a password file, optionally TLS with a certificate
made here by the openssl command line. Tests skip loudly where Mosquitto is not installed
(``apt-get install mosquitto``; ``nox -s tests`` does it when run as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import free_ports

USER = "iot"
PASSWORD = "s3cret-pw"
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
#: Bounded waits for conditions; generous, because a loaded 2-core machine is slow, not wrong.
WAIT_SECONDS = 60.0


def mosquitto_binary() -> str:
    """The broker's path, or a loud skip."""
    found = shutil.which("mosquitto", path=SBIN)
    if found is None or shutil.which("mosquitto_passwd", path=SBIN) is None:
        pytest.skip("MQTT tests NOT RUN: install Debian's mosquitto (apt-get install mosquitto)")
    return found


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@attrs.frozen
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost, by the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("TLS test NOT RUN: the openssl command is missing")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        directory / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str | Path) -> None:
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)

    run(*("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"), "-keyout", ca_key,
        "-out", ca, "-subj", "/CN=iot-config test CA")  # fmt: skip
    run(*("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"), "-keyout", key,
        "-out", csr)  # fmt: skip
    run(*("x509", "-req", "-days", "2", "-in", csr, "-CA", ca, "-CAkey", ca_key),
        "-CAcreateserial", "-out", cert, "-extfile", ext)  # fmt: skip
    return Certificates(ca, cert, key)


class Mosquitto:
    """One broker process; `stop` and `start` again keep the port (a broker restart)."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: Certificates | None = None,
        users: dict[str, str] | None = None,
        acl: str | None = None,
    ) -> None:
        self._binary = mosquitto_binary()
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        (self.port,) = free_ports(1)
        self.tls = tls
        passwords = directory / "passwords"
        passwords.write_text("")
        passwords.chmod(0o600)
        for user, password in {USER: PASSWORD, **(users or {})}.items():
            subprocess.run(
                [
                    shutil.which("mosquitto_passwd", path=SBIN) or "",
                    "-b",
                    passwords,
                    user,
                    password,
                ],
                check=True,
                capture_output=True,
            )
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwords}",
            "persistence false",  # a restart loses every retained message: the hard case
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:  # else it drops to the mosquitto user, who cannot read tmp_path
            lines.insert(0, "user root")
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        if acl is not None:
            (directory / "acl").write_text(acl)
            lines.append(f"acl_file {directory / 'acl'}")
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        wait_for(self._accepting, f"mosquitto on port {self.port}; log: {self.log()}")

    def _accepting(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"mosquitto exited {self._proc.returncode}: {self.log()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(30)
        self._proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


@attrs.frozen
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client that records every message on its topic filters, in arrival order."""

    def __init__(
        self,
        broker: Mosquitto,
        *topics: str,
        user: str = USER,
        password: str = PASSWORD,
        ca: Path | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topics = topics
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.username_pw_set(user, password)
        if broker.tls is not None:
            client.tls_set_context(ssl.create_default_context(cafile=str(ca or broker.tls.ca)))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        wait_for(self._subscribed.is_set, f"subscription to {topics}")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, *_: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload), message.retain))

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def subscribed(
    broker: Mosquitto, *topics: str, user: str = USER, password: str = PASSWORD
) -> Iterator[Subscriber]:
    subscriber = Subscriber(broker, *topics, user=user, password=password)
    try:
        yield subscriber
    finally:
        subscriber.close()
