"""Per-device credentials over real HTTP: ``iot-config serve`` in each mode, tokens from the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PYTHON, SERVE, Answer, ServerProcess, call, child_env, free_port

from iot_config_core import open_store
from iot_config_core.device_tokens import new_secret_line

MAC_A = "aa-bb-cc-dd-ee-01"
MAC_B = "aa-bb-cc-dd-ee-02"
MAC_ABSENT = "aa-bb-cc-dd-ee-99"
ADMIN = "admin-token-for-tests"
REVOCATION_WAIT = 10.0  # replicas re-check the list about once a second


def device_path(mac: str) -> str:
    return f"/esp32/config/{mac}.json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Fleet:
    """A store with two devices, a secret file, and servers and CLI runs over both."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers = 0
        self.store = root / "store"
        self.secret_file = root / "device-secrets"
        self.write_secrets(new_secret_line(1))
        store = open_store(str(self.store), create=True)
        store.put(MAC_A, {"wifi": {"ssid": "a", "password": "secret-a"}})
        store.put(MAC_B, {"wifi": {"ssid": "b", "password": "secret-b"}})

    def write_secrets(self, *lines: str) -> None:
        self.secret_file.write_text("".join(line + "\n" for line in lines))
        self.secret_file.chmod(0o600)

    def settings(self, mode: str) -> dict[str, str]:
        return {
            "IOT_CONFIG_STORE": str(self.store),
            "IOT_CONFIG_DEVICE_AUTH": mode,
            "IOT_CONFIG_DEVICE_SECRET_FILE": str(self.secret_file),
            "IOT_CONFIG_ADMIN_TOKENS": ADMIN,
            "IOT_CONFIG_LOG_LEVEL": "DEBUG",  # so "never logged" covers every level
            "IOT_CONFIG_ACCESS_LOG": "true",  # and the access log
        }

    def env(self, mode: str) -> dict[str, str]:
        return child_env(**self.settings(mode))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "iot_config_server.cli", "device-token", *args],
            env=self.env("required"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def token(self, mac: str, *args: str) -> str:
        done = self.cli(mac, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def serve(self, mode: str) -> ServerProcess:
        """A server in ``mode``, with a log of its own (a test may start several in turn)."""
        self.servers += 1
        log = self.root / f"server-{self.servers}.log"
        return ServerProcess("--threads", "2", log_path=log, env=self.settings(mode))


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


@pytest.fixture
def required(fleet: Fleet) -> Iterator[ServerProcess]:
    with fleet.serve("required") as server:
        yield server


def get(
    server: ServerProcess, mac: str, headers: dict[str, str] | None = None, query: str = ""
) -> Answer:
    return call(server.port, "GET", device_path(mac) + query, headers=headers)


def comparable(answer: Answer) -> tuple[int, dict[str, str], dict[str, object]]:
    """An answer without what differs per request anyway (request id, correlation id)."""
    status, headers, body = answer
    kept = {k: v for k, v in headers.items() if k not in {"x-request-id", "date"}}
    document = json.loads(body)
    document.pop("correlationId", None)
    return status, kept, document


def metrics_text(server: ServerProcess) -> str:
    status, _, body = call(server.port, "GET", "/metrics", headers=bearer(ADMIN))
    assert status == 200
    return body.decode()


def metric(server: ServerProcess, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics_text(server), re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


def test_off_is_todays_open_endpoint(fleet: Fleet) -> None:
    with fleet.serve("off") as server:
        assert get(server, MAC_A)[0] == 200
        assert get(server, MAC_A, bearer("v1.not-a-token"))[0] == 200  # credentials ignored
        assert get(server, MAC_ABSENT)[0] == 404


def test_optional_serves_everyone_and_counts_the_unprovisioned(fleet: Fleet) -> None:
    token_a = fleet.token(MAC_A)
    with fleet.serve("optional") as server:
        assert get(server, MAC_A, bearer(token_a))[0] == 200
        for _ in range(3):
            assert get(server, MAC_B)[0] == 200  # not provisioned yet: served, counted
        assert get(server, MAC_ABSENT)[0] == 404
        # Credentials that are present must be right: a wrong one is refused, not ignored.
        assert get(server, MAC_B, bearer(token_a))[0] == 401
        assert metric(server, "iot_config_device_unauthenticated_reads_total") == 4
        assert metric(server, 'iot_config_device_auth_failures_total{reason="mismatch"}') == 1
        log = server.log()
    assert f"device {MAC_B} read its config without a device token" in log
    assert log.count(f"device {MAC_B} read its config") == 1  # once per MAC and interval
    assert f"device {MAC_A} read its config" not in log


def test_required_serves_only_the_device_itself_and_admins(
    fleet: Fleet, required: ServerProcess
) -> None:
    token_a, token_b = fleet.token(MAC_A), fleet.token(MAC_B)
    status, headers, body = get(required, MAC_A, bearer(token_a))
    assert status == 200
    assert json.loads(body)["wifi"]["password"] == "secret-a"
    assert get(required, MAC_B, bearer(token_b))[0] == 200
    assert get(required, MAC_B, bearer(token_a))[0] == 401  # A's token on B
    assert get(required, MAC_A, bearer(token_b))[0] == 401
    assert get(required, MAC_A)[0] == 401
    assert get(required, MAC_A, {"Authorization": f"Basic {token_a}"})[0] == 401
    assert get(required, MAC_A, bearer(token_a[:-2]))[0] == 401
    # Any spelling of the MAC in the path: the token is bound to the address, not the text.
    assert get(required, "AA:BB:CC:DD:EE:01", bearer(token_a))[0] == 200
    # The query form, for clients that cannot set headers.
    assert get(required, MAC_A, query=f"?access_token={token_a}")[0] == 200
    assert get(required, MAC_B, query=f"?access_token={token_a}")[0] == 401
    # Conditional polls and HEAD keep working with a token.
    etag = headers["etag"]
    assert get(required, MAC_A, {**bearer(token_a), "If-None-Match": etag})[0] == 304
    assert call(required.port, "HEAD", device_path(MAC_A), headers=bearer(token_a))[0] == 200
    # A device asking for its own absent config learns it is absent.
    assert get(required, MAC_ABSENT, bearer(fleet.token(MAC_ABSENT)))[0] == 404
    # Admins read every device, on both device routes; only from the header.
    assert get(required, MAC_B, bearer(ADMIN))[0] == 200
    assert call(required.port, "GET", f"/api/configs/{MAC_A}.json", headers=bearer(ADMIN))[0] == 200
    assert get(required, MAC_B, query=f"?access_token={ADMIN}")[0] == 401
    # The REST API is unchanged by device auth: devices' tokens are not admin tokens.
    assert call(required.port, "GET", f"/api/configs/{MAC_A}", headers=bearer(token_a))[0] == 401


def test_required_gives_one_answer_for_existing_and_absent_macs(
    fleet: Fleet, required: ServerProcess
) -> None:
    token_a = fleet.token(MAC_A)
    for credentials in ({}, bearer(token_a), bearer("v1." + "A" * 43), bearer("garbage")):
        existing = comparable(get(required, MAC_B, credentials))
        absent = comparable(get(required, MAC_ABSENT, credentials))
        assert existing == absent
        status, headers, body = existing
        assert status == 401
        assert headers["www-authenticate"] == 'Bearer realm="iot-config"'
        assert body == {
            "error": "Cannot get config because a valid device token for this MAC is required",
            "code": "UNAUTHORIZED",
            "status": 401,
            "details": {},
        }


def test_failures_are_counted_and_logged_without_the_token(
    fleet: Fleet, required: ServerProcess
) -> None:
    token_a = fleet.token(MAC_A)
    headers = {**bearer(token_a), "X-Request-ID": "probe-42"}
    assert get(required, MAC_B, headers)[0] == 401
    assert get(required, MAC_B)[0] == 401
    assert get(required, MAC_A, query=f"?access_token={token_a}&x=1")[0] == 200
    assert get(required, MAC_B, query=f"?access_token={token_a}")[0] == 401
    assert metric(required, 'iot_config_device_auth_failures_total{reason="mismatch"}') == 2
    assert metric(required, 'iot_config_device_auth_failures_total{reason="missing"}') == 1
    assert metric(required, 'iot_config_device_auth_failures_total{reason="revoked"}') == 0
    log = required.log()
    line = next(line for line in log.splitlines() if "probe-42" in line)
    assert f"device auth failed for {MAC_B}: mismatch" in line
    assert token_a not in log
    assert token_a.split(".", 1)[1] not in log


def test_a_revoked_token_is_refused_on_every_replica(fleet: Fleet) -> None:
    token_a = fleet.token(MAC_A)
    with fleet.serve("required") as first, fleet.serve("required") as second:
        assert get(first, MAC_A, bearer(token_a))[0] == 200
        assert get(second, MAC_A, bearer(token_a))[0] == 200
        revoked = fleet.cli(MAC_A, "--revoke")
        assert revoked.returncode == 0, revoked.stderr
        for server in (first, second):
            assert wait_for_status(server, MAC_A, bearer(token_a), 401) == 401
        assert get(first, MAC_B, bearer(fleet.token(MAC_B)))[0] == 200  # others unaffected
        assert metric(first, 'iot_config_device_auth_failures_total{reason="revoked"}') >= 1
        # A revoked device's refusal looks like any other.
        assert comparable(get(first, MAC_A, bearer(token_a))) == comparable(get(first, MAC_A))
        listed = fleet.cli("--list-revoked")
        assert listed.stdout.startswith(f"{MAC_A}  through v1")
        assert fleet.cli(MAC_A, "--unrevoke").returncode == 0
        for server in (first, second):
            assert wait_for_status(server, MAC_A, bearer(token_a), 200) == 200


def test_rotation_two_secret_versions_then_retiring_the_old(fleet: Fleet) -> None:
    v1_line = fleet.secret_file.read_text().strip()
    old_token = fleet.token(MAC_A)
    assert old_token.startswith("v1.")
    v2_line = new_secret_line(2)
    fleet.write_secrets(v1_line, v2_line)
    new_token = fleet.token(MAC_A)
    assert new_token.startswith("v2.")
    with fleet.serve("required") as server:  # during the rotation: both verify
        assert get(server, MAC_A, bearer(old_token))[0] == 200
        assert get(server, MAC_A, bearer(new_token))[0] == 200
        assert get(server, MAC_B, bearer(fleet.token(MAC_B)))[0] == 200
        # How far the rotation got: old-version tokens still in use (the newest is not counted).
        old = 'iot_config_device_auth_old_version_accepted_total{key_version="v1"}'
        assert metric(server, old) == 1
        assert 'old_version_accepted_total{key_version="v2"}' not in metrics_text(server)
        # A stolen v1 token is revoked; the re-provisioned device's v2 token is not.
        assert fleet.cli(MAC_A, "--revoke", "--key-version", "1").returncode == 0
        assert wait_for_status(server, MAC_A, bearer(old_token), 401) == 401
        assert get(server, MAC_A, bearer(new_token))[0] == 200
    fleet.write_secrets(v2_line)  # rotation done: v1 retired
    with fleet.serve("required") as server:
        assert get(server, MAC_A, bearer(old_token))[0] == 401
        assert get(server, MAC_A, bearer(new_token))[0] == 200
        assert get(server, MAC_B, bearer(fleet.token(MAC_B)))[0] == 200


def test_a_bad_secret_file_stops_the_server_at_start(fleet: Fleet) -> None:
    fleet.secret_file.write_text("v1:too-short\n")
    port = free_port()
    done = subprocess.run(
        [PYTHON, *SERVE, "--port", str(port)],
        env=fleet.env("required"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert "at least 32 are needed" in done.stdout + done.stderr
    assert "too-short" not in done.stdout + done.stderr


def wait_for_status(server: ServerProcess, mac: str, headers: dict[str, str], wanted: int) -> int:
    deadline = time.monotonic() + REVOCATION_WAIT
    status = get(server, mac, headers)[0]
    while status != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
        status = get(server, mac, headers)[0]
    return status
