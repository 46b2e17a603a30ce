"""``iot-config serve`` end to end: the real command, a real port, a real store directory.

Everything a deployment relies on and no in-process test can show: the production server starts
from the command line, speaks HTTP on a socket, creates only the default store, logs where it
serves from, and on SIGTERM lets the request in flight finish before exiting 0.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("granian", reason="the server extra (granian) is not installed")

REPO = Path(__file__).resolve().parent.parent
MAC = "aa-bb-cc-dd-ee-01"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

Answer = tuple[int, dict[str, str], bytes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus any IOT_CONFIG_* settings, the repository importable."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("IOT_CONFIG_") and key not in {"ESP32_CONFIGS_DIR", "CORS_ORIGINS"}
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class Server:
    """``python -m iot_config_server.cli serve ...`` in a child process, output in a log file."""

    def __init__(self, args: list[str], cwd: Path, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.log_path = cwd / "server.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iot_config_server.cli", "serve", *args],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: cleanup reaches Granian's workers
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_live(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode} at start:\n{self.log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(self.port, "GET", "/api/health/live")[0] == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"server not live after {START_TIMEOUT} s:\n{self.log()}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(STOP_TIMEOUT)

    def close(self) -> None:
        """Stop it as an orchestrator would (SIGTERM, then SIGKILL), leaving no worker behind.

        SIGKILL to the supervisor alone would orphan its worker process, still serving.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def running(args: list[str], cwd: Path, port: int, env: dict[str, str]) -> Iterator[Server]:
    server = Server(args, cwd, port, env)
    try:
        server.wait_live()
        yield server
    finally:
        server.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def server(tmp_path: Path, store: Path) -> Iterator[Server]:
    port = free_port()
    args = ["--store", str(store), "--host", "127.0.0.1", "--port", str(port), "--threads", "4"]
    with running(args, tmp_path, port, child_env()) as srv:
        yield srv


def test_full_http_round_trip(server: Server, store: Path) -> None:
    port = server.port
    content = {"deviceName": "kitchen", "enableOTA": False}
    body = json.dumps({"content": content}).encode()
    status, headers, _ = request(
        port, "PUT", f"/api/configs/{MAC}", body, {"Content-Type": "application/json"}
    )
    assert status in (200, 201)
    etag = headers["etag"]
    # What devices read is exactly the file on disk.
    stored = (store / f"{MAC}.json").read_bytes()
    assert json.loads(stored) == content

    status, headers, payload = request(port, "GET", f"/api/configs/{MAC}")
    assert status == 200
    assert headers["etag"] == etag
    assert json.loads(payload)["content"] == content

    status, headers, payload = request(port, "GET", f"/esp32/config/{MAC}.json")
    assert status == 200
    assert payload == stored
    assert headers["etag"] == etag
    status, headers, payload = request(
        port, "GET", f"/esp32/config/{MAC}.json", headers={"If-None-Match": etag}
    )
    assert (status, payload) == (304, b"")
    assert headers["etag"] == etag

    status, _, payload = request(port, "GET", "/api/configs")
    assert status == 200
    listing = json.loads(payload)
    assert [item["mac_address"] for item in listing["configs"]] == [MAC]
    assert listing["count"] == 1

    status, _, _ = request(port, "DELETE", f"/api/configs/{MAC}", headers={"If-Match": etag})
    assert status in (200, 204)
    assert not (store / f"{MAC}.json").exists()
    assert request(port, "GET", f"/esp32/config/{MAC}.json")[0] == 404

    assert request(port, "GET", "/api/health/ready")[0] == 200
    status, _, payload = request(port, "GET", "/metrics")
    assert status == 200
    assert b"# TYPE" in payload

    log = server.log()
    assert f"http://127.0.0.1:{port}/" in log
    assert str(store) in log
    assert log.count("no admin tokens are set") == 1
    assert "Traceback" not in log


def test_sigterm_lets_the_request_in_flight_finish(server: Server, store: Path) -> None:
    """A PUT whose body is still arriving when SIGTERM lands completes, then the process exits 0."""
    body = json.dumps({"content": {"deviceName": "in-flight"}}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    with sock:
        head = (
            f"PUT /api/configs/{MAC} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        sock.sendall(head + body[:10])
        time.sleep(0.3)  # the request is now in the server
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.proc.poll() is None, "exited with a request in flight"
        sock.sendall(body[10:])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith((b"HTTP/1.1 200", b"HTTP/1.1 201")), reply[:200]
    assert json.loads((store / f"{MAC}.json").read_bytes()) == {"deviceName": "in-flight"}
    assert server.proc.wait(STOP_TIMEOUT) == 0
    assert "Traceback" not in server.log()
    # And it no longer listens.
    with pytest.raises(OSError):
        request(server.port, "GET", "/api/health/live")


def test_sigint_stops_cleanly(tmp_path: Path, store: Path) -> None:
    port = free_port()
    with running(["--store", str(store), "--port", str(port)], tmp_path, port, child_env()) as srv:
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(STOP_TIMEOUT) == 0


def test_no_arguments_serve_the_default_store_on_8080(tmp_path: Path) -> None:
    if not port_is_free(8080):
        pytest.skip("127.0.0.1:8080 is in use on this machine; the default port cannot be tested")
    with running([], tmp_path, 8080, child_env()) as srv:
        assert (tmp_path / "iot-configs").is_dir()
        body = json.dumps({"content": {"deviceName": "default"}}).encode()
        status, _, _ = request(
            8080, "PUT", f"/api/configs/{MAC}", body, {"Content-Type": "application/json"}
        )
        assert status in (200, 201)
        assert (tmp_path / "iot-configs" / f"{MAC}.json").is_file()
        assert "http://127.0.0.1:8080/" in srv.log()
        assert srv.terminate() == 0


def test_a_configured_store_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    port = free_port()
    command = [sys.executable, "-m", "iot_config_server.cli", "serve"]
    proc = subprocess.run(
        [*command, "--store", str(missing), "--port", str(port)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 3
    assert not missing.exists()
    assert b"does not exist" in proc.stdout + proc.stderr
    assert b"Traceback" not in proc.stdout + proc.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path: Path, store: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "iot_config_server.cli", "serve", "--store", str(store)]
        proc = subprocess.run(
            [*command, "--port", str(port)],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            timeout=30,
            check=False,
        )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}".encode() in output
    assert b"Traceback" not in output


def test_settings_come_from_the_environment(tmp_path: Path, store: Path) -> None:
    """The container way: no flags, IOT_CONFIG_* variables; admin auth on when tokens are set."""
    port = free_port()
    env = child_env(
        IOT_CONFIG_STORE=str(store),
        IOT_CONFIG_PORT=str(port),
        IOT_CONFIG_ADMIN_TOKENS="s3cret-token",
        IOT_CONFIG_LOG_FORMAT="json",
    )
    with running([], tmp_path, port, env) as srv:
        body = json.dumps({"content": {"deviceName": "auth"}}).encode()
        json_headers = {"Content-Type": "application/json"}
        assert request(port, "PUT", f"/api/configs/{MAC}", body, json_headers)[0] == 401
        auth = {**json_headers, "Authorization": "Bearer s3cret-token"}
        assert request(port, "PUT", f"/api/configs/{MAC}", body, auth)[0] in (200, 201)
        assert request(port, "GET", f"/esp32/config/{MAC}.json")[0] == 200
        assert srv.terminate() == 0
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        start = [line for line in lines if "admin auth enabled" in line["message"]]
        assert len(start) == 1
        assert not any("no admin tokens" in line["message"] for line in lines)
        assert "s3cret-token" not in srv.log()


def test_two_workers_share_one_store(tmp_path: Path, store: Path) -> None:
    """Concurrent compare-and-swap increments through two worker processes lose no update."""
    port = free_port()
    args = ["--store", str(store), "--port", str(port), "--workers", "2", "--threads", "4"]
    with running(args, tmp_path, port, child_env()) as srv:
        json_headers = {"Content-Type": "application/json"}
        first = json.dumps({"content": {"count": 0}}).encode()
        assert request(port, "PUT", f"/api/configs/{MAC}", first, json_headers)[0] in (200, 201)
        errors: list[str] = []

        def increment(times: int) -> None:
            done = 0
            attempts = 0
            while done < times and attempts < times * 50:
                attempts += 1
                status, headers, payload = request(port, "GET", f"/api/configs/{MAC}")
                count = json.loads(payload)["content"]["count"]
                body = json.dumps({"content": {"count": count + 1}}).encode()
                status, _, _ = request(
                    port,
                    "PUT",
                    f"/api/configs/{MAC}",
                    body,
                    {**json_headers, "If-Match": headers["etag"]},
                )
                if status in (200, 201):
                    done += 1
                elif status != 412:
                    errors.append(f"unexpected status {status}")
                    return

        threads = [threading.Thread(target=increment, args=(10,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        final = request(port, "GET", f"/api/configs/{MAC}")
        assert json.loads(final[2])["content"]["count"] == 40
        assert "Spawning worker-2" in srv.log()
        assert srv.terminate() == 0


# -- the WSGI factory, for servers that import the app by path ----------------------------------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The factory configures process logging (as a worker must); undo it for the next test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def test_wsgi_factory_builds_the_app_from_the_environment(tmp_path: Path) -> None:
    import webtest  # noqa: PLC0415

    from iot_config_server.wsgi import create_app_from_env  # noqa: PLC0415

    store = tmp_path / "store"
    store.mkdir()
    (store / f"{MAC}.json").write_bytes(b'{"deviceName": "from-env"}')
    app = webtest.TestApp(create_app_from_env({"IOT_CONFIG_STORE": str(store)}))
    answer = app.get(f"/esp32/config/{MAC}.json")
    assert answer.body == b'{"deviceName": "from-env"}'


def test_wsgi_factory_creates_only_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import webtest  # noqa: PLC0415

    from iot_config_server.wsgi import create_app_from_env  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    create_app_from_env({})
    assert (tmp_path / "iot-configs").is_dir()
    missing = tmp_path / "elsewhere"
    app = webtest.TestApp(create_app_from_env({"ESP32_CONFIGS_DIR": str(missing)}))
    assert app.get("/api/health/ready", expect_errors=True).status_int == 503
    assert not missing.exists()


def test_config_count_is_known_before_anyone_lists(tmp_path: Path, store: Path) -> None:
    """The start-up listing fills the count Prometheus reads, without a GET /api/configs."""
    for index in range(3):
        (store / f"aa-bb-cc-dd-ee-0{index}.json").write_text(f'{{"deviceName": "d{index}"}}\n')
    (store / "junk.txt").write_text("not a config\n")
    port = free_port()
    args = ["--store", str(store), "--host", "127.0.0.1", "--port", str(port)]
    with running(args, tmp_path, port, child_env()) as srv:
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            text = request(srv.port, "GET", "/metrics")[2].decode()
            if "\niot_config_configs 3.0" in text:
                break
            time.sleep(0.1)
        assert "\niot_config_configs 3.0" in text, text
        assert srv.terminate() == 0


# -- where the server listens ----------------------------------------------------------------------


def run_serve(args: list[str], cwd: Path, timeout: float = 30) -> tuple[int, str]:
    """``iot-config serve ARGS`` expected to exit by itself: (status, stdout and stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "iot_config_server.cli", "serve", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "ERROR" in line or "error:" in line]


def test_a_second_server_on_the_same_port_is_refused(server: Server, store: Path) -> None:
    """Granian shares ports with SO_REUSEPORT: a second iot-config must not split the traffic."""
    body = json.dumps({"content": {"deviceName": "first"}}).encode()
    json_headers = {"Content-Type": "application/json"}
    assert request(server.port, "PUT", f"/api/configs/{MAC}", body, json_headers)[0] in (200, 201)
    other = store.parent / "other-store"
    other.mkdir()
    args = ["--store", str(other), "--host", "127.0.0.1", "--port", str(server.port)]
    status, output = run_serve(args, store.parent)
    assert status == 3, output
    assert error_lines(output) == [error_lines(output)[0]], output  # one line
    assert f"127.0.0.1:{server.port}" in error_lines(output)[0]
    assert "already in use" in error_lines(output)[0]
    assert "Traceback" not in output
    # The first server still answers every request itself (the second never got any).
    answers = [request(server.port, "GET", f"/esp32/config/{MAC}.json")[0] for _ in range(16)]
    assert answers == [200] * 16
    assert server.proc.poll() is None


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("no-such-host.invalid", "is not an address to listen on"),
        ("300.1.2.3", "is not an address to listen on"),
        ("192.0.2.1", "not an address of this machine"),  # TEST-NET-1: never local
    ],
)
def test_a_host_that_cannot_be_listened_on_is_a_usage_error(
    tmp_path: Path, store: Path, host: str, reason: str
) -> None:
    args = ["--store", str(store), "--host", host, "--port", str(free_port())]
    status, output = run_serve(args, tmp_path)
    assert status == 2, output
    assert len(error_lines(output)) == 1, output
    assert reason in output
    assert "Traceback" not in output


def test_a_hostname_is_resolved(tmp_path: Path, store: Path) -> None:
    port = free_port()
    args = ["--store", str(store), "--host", "localhost", "--port", str(port)]
    server = Server(args, tmp_path, port, child_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "serving http://" not in server.log() and time.monotonic() < deadline:
            assert server.proc.poll() is None, server.log()
            time.sleep(0.05)
        line = next(x for x in server.log().splitlines() if "serving http://" in x)
        assert f"http://127.0.0.1:{port}/" in line or f"http://[::1]:{port}/" in line
        if "127.0.0.1" in line:
            server.wait_live()
        assert server.terminate() == 0
    finally:
        server.close()


def test_a_memory_store_with_several_workers_is_refused(tmp_path: Path) -> None:
    status, output = run_serve(["--store", "memory://fleet", "--workers", "2"], tmp_path)
    assert status == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert "memory://" in output
    assert "Traceback" not in output


# -- load the store absorbs is never shed ---------------------------------------------------------


def burst(port: int, requests: list[tuple[str, str, bytes | None]]) -> list[int]:
    """Send every request at once, one connection each; the statuses in order."""
    statuses = [0] * len(requests)
    start = threading.Barrier(len(requests))
    json_headers = {"Content-Type": "application/json"}

    def send(index: int) -> None:
        method, path, body = requests[index]
        start.wait(30)
        try:
            statuses[index] = request(port, method, path, body, json_headers if body else None)[0]
        except (OSError, http.client.HTTPException):
            statuses[index] = -1

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses


def test_bursts_of_writes_are_never_shed(server: Server, store: Path) -> None:
    """200 concurrent PUTs to one MAC (queued on its lock), then to 200 MACs, with device reads
    in between: all succeed on a local disk, however long the queue."""
    body = json.dumps({"content": {"n": 0}}).encode()
    json_headers = {"Content-Type": "application/json"}
    assert request(server.port, "PUT", f"/api/configs/{MAC}", body, json_headers)[0] in (200, 201)
    one_mac: list[tuple[str, str, bytes | None]] = [
        ("PUT", f"/api/configs/{MAC}", json.dumps({"content": {"n": i}}).encode())
        for i in range(200)
    ]
    reads: list[tuple[str, str, bytes | None]] = [
        ("GET", f"/esp32/config/{MAC}.json", None) for _ in range(40)
    ]
    statuses = burst(server.port, one_mac + reads)
    assert statuses == [200] * len(statuses), sorted(set(statuses))
    many_macs: list[tuple[str, str, bytes | None]] = [
        ("PUT", f"/api/configs/02-00-00-00-{i // 256:02x}-{i % 256:02x}", body) for i in range(200)
    ]
    statuses = burst(server.port, many_macs)
    assert set(statuses) <= {200, 201}, sorted(set(statuses))
    assert len(list(store.glob("*.json"))) == 201
    assert "STORE_BUSY" not in server.log()


# -- the access log ------------------------------------------------------------------------------


def test_access_log_one_json_line_per_request(tmp_path: Path, store: Path) -> None:
    """Method, route template (not the raw path), status, duration and the request's id."""
    port = free_port()
    env = child_env(IOT_CONFIG_ACCESS_LOG="on", IOT_CONFIG_LOG_FORMAT="json")
    with running(["--store", str(store), "--port", str(port)], tmp_path, port, env) as srv:
        body = json.dumps({"content": {"deviceName": "logged"}}).encode()
        sent = [
            ("PUT", f"/api/configs/{MAC}", body, "rid-put"),
            ("GET", f"/esp32/config/{MAC}.json", None, "rid-device"),
            ("GET", "/esp32/config/not-a-mac.json", None, "rid-bad-mac"),
            ("GET", "/no/such/route", None, "rid-unmatched"),
            ("DELETE", "/api/health/live", None, "rid-wrong-method"),
        ]
        for method, path, payload, rid in sent:
            headers = {"X-Request-ID": rid, "Content-Type": "application/json"}
            request(port, method, path, payload, headers)
        assert srv.terminate() == 0
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    access = {
        line["request_id"]: line for line in lines if line["logger"] == "iot_config_server.access"
    }
    expected = {
        "rid-put": ("PUT", "/api/configs/<mac>", 200),
        "rid-device": ("GET", "/esp32/config/<mac>.json", 200),
        "rid-bad-mac": ("GET", "/esp32/config/<mac>.json", 400),
        "rid-unmatched": ("GET", "-", 404),
        "rid-wrong-method": ("DELETE", "-", 405),
    }
    logged = {rid: (a["method"], a["route"], a["status"]) for rid, a in access.items()}
    assert {rid: logged.get(rid) for rid in expected} == expected
    assert all(isinstance(a["duration_ms"], float) for a in access.values())
    assert not any("not-a-mac" in line["message"] for line in access.values())


def test_access_log_is_off_by_default(server: Server) -> None:
    request(server.port, "GET", "/api/health/live")
    assert "iot_config_server.access" not in server.log()
