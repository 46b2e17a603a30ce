"""``iot-config serve`` end to end: the real command, a real port, a real store directory.

Everything a deployment relies on and no in-process test can show: the production server starts
from the command line, speaks HTTP on a socket, creates only the default store, logs where it
serves from, and on SIGTERM lets the request in flight finish before exiting 0.
"""

from __future__ import annotations

import http.client
import json
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import JSON_HEADERS, PYTHON, SERVE, ServerProcess, call, child_env, free_port, put_body

pytest.importorskip("granian", reason="the server extra (granian) is not installed")

MAC = "aa-bb-cc-dd-ee-01"
STOP_TIMEOUT = 10.0


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def server(tmp_path: Path, store: Path) -> Iterator[ServerProcess]:
    log = tmp_path / "server.log"
    with ServerProcess("--store", str(store), "--threads", "4", log_path=log) as srv:
        yield srv


def test_full_http_round_trip(server: ServerProcess, store: Path) -> None:
    port = server.port
    content = {"deviceName": "kitchen", "enableOTA": False}
    body = put_body(content)
    status, headers, _ = call(port, "PUT", f"/api/configs/{MAC}", body, JSON_HEADERS)
    assert status in (200, 201)
    etag = headers["etag"]
    # What devices read is exactly the file on disk.
    stored = (store / f"{MAC}.json").read_bytes()
    assert json.loads(stored) == content

    status, headers, payload = call(port, "GET", f"/api/configs/{MAC}")
    assert status == 200
    assert headers["etag"] == etag
    assert json.loads(payload)["content"] == content

    status, headers, payload = call(port, "GET", f"/esp32/config/{MAC}.json")
    assert status == 200
    assert payload == stored
    assert headers["etag"] == etag
    status, headers, payload = call(
        port, "GET", f"/esp32/config/{MAC}.json", headers={"If-None-Match": etag}
    )
    assert (status, payload) == (304, b"")
    assert headers["etag"] == etag

    status, _, payload = call(port, "GET", "/api/configs")
    assert status == 200
    listing = json.loads(payload)
    assert [item["mac_address"] for item in listing["configs"]] == [MAC]
    assert listing["count"] == 1

    status, _, _ = call(port, "DELETE", f"/api/configs/{MAC}", headers={"If-Match": etag})
    assert status in (200, 204)
    assert not (store / f"{MAC}.json").exists()
    assert call(port, "GET", f"/esp32/config/{MAC}.json")[0] == 404

    assert call(port, "GET", "/api/health/ready")[0] == 200
    status, _, payload = call(port, "GET", "/metrics")
    assert status == 200
    assert b"# TYPE" in payload

    log = server.log()
    assert f"http://127.0.0.1:{port}/" in log
    assert str(store) in log
    assert log.count("no admin tokens are set") == 1
    assert "Traceback" not in log


def test_sigterm_lets_the_request_in_flight_finish(server: ServerProcess, store: Path) -> None:
    """A PUT whose body is still arriving when SIGTERM lands completes, then the process exits 0."""
    body = put_body({"deviceName": "in-flight"})
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
        call(server.port, "GET", "/api/health/live")


def test_sigint_stops_cleanly(tmp_path: Path, store: Path) -> None:
    with ServerProcess("--store", str(store), log_path=tmp_path / "server.log") as srv:
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(STOP_TIMEOUT) == 0


def test_no_arguments_serve_the_default_store_on_8080(tmp_path: Path) -> None:
    if not port_is_free(8080):
        pytest.skip("127.0.0.1:8080 is in use on this machine; the default port cannot be tested")
    with ServerProcess(log_path=tmp_path / "server.log", port=8080) as srv:
        assert (tmp_path / "iot-configs").is_dir()
        body = put_body({"deviceName": "default"})
        status, _, _ = call(8080, "PUT", f"/api/configs/{MAC}", body, JSON_HEADERS)
        assert status in (200, 201)
        assert (tmp_path / "iot-configs" / f"{MAC}.json").is_file()
        assert "http://127.0.0.1:8080/" in srv.log()
        assert srv.terminate() == 0


def test_a_configured_store_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    status, output = run_serve(["--store", str(missing), "--port", str(free_port())], tmp_path)
    assert status == 3
    assert not missing.exists()
    assert "does not exist" in output
    assert "Traceback" not in output


def test_a_port_in_use_is_a_clear_error(tmp_path: Path, store: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, output = run_serve(["--store", str(store), "--port", str(port)], tmp_path)
    assert status == 3
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


def test_settings_come_from_the_environment(tmp_path: Path, store: Path) -> None:
    """The container way: no flags, IOT_CONFIG_* variables; admin auth on when tokens are set."""
    port = free_port()
    env = {
        "IOT_CONFIG_STORE": str(store),
        "IOT_CONFIG_PORT": str(port),
        "IOT_CONFIG_ADMIN_TOKENS": "s3cret-token",
        "IOT_CONFIG_LOG_FORMAT": "json",
    }
    with ServerProcess(log_path=tmp_path / "server.log", port=port, env=env) as srv:
        body = put_body({"deviceName": "auth"})
        assert call(port, "PUT", f"/api/configs/{MAC}", body, JSON_HEADERS)[0] == 401
        auth = {**JSON_HEADERS, "Authorization": "Bearer s3cret-token"}
        assert call(port, "PUT", f"/api/configs/{MAC}", body, auth)[0] in (200, 201)
        assert call(port, "GET", f"/esp32/config/{MAC}.json")[0] == 200
        assert srv.terminate() == 0
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        start = [line for line in lines if "admin auth enabled" in line["message"]]
        assert len(start) == 1
        assert not any("no admin tokens" in line["message"] for line in lines)
        assert "s3cret-token" not in srv.log()


def test_two_workers_share_one_store(tmp_path: Path, store: Path) -> None:
    """Concurrent compare-and-swap increments through two worker processes lose no update."""
    args = ["--store", str(store), "--workers", "2", "--threads", "4"]
    with ServerProcess(*args, log_path=tmp_path / "server.log") as srv:
        port = srv.port
        first = put_body({"count": 0})
        assert call(port, "PUT", f"/api/configs/{MAC}", first, JSON_HEADERS)[0] in (200, 201)
        errors: list[str] = []

        def increment(times: int) -> None:
            done = 0
            attempts = 0
            while done < times and attempts < times * 50:
                attempts += 1
                status, headers, payload = call(port, "GET", f"/api/configs/{MAC}")
                count = json.loads(payload)["content"]["count"]
                body = put_body({"count": count + 1})
                status, _, _ = call(
                    port,
                    "PUT",
                    f"/api/configs/{MAC}",
                    body,
                    {**JSON_HEADERS, "If-Match": headers["etag"]},
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
        final = call(port, "GET", f"/api/configs/{MAC}")
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
    with ServerProcess("--store", str(store), log_path=tmp_path / "server.log") as srv:
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            text = call(srv.port, "GET", "/metrics")[2].decode()
            if "\niot_config_configs 3.0" in text:
                break
            time.sleep(0.1)
        assert "\niot_config_configs 3.0" in text, text
        assert srv.terminate() == 0


# -- where the server listens ----------------------------------------------------------------------


def run_serve(args: list[str], cwd: Path, timeout: float = 30) -> tuple[int, str]:
    """``iot-config serve ARGS`` expected to exit by itself: (status, stdout and stderr)."""
    proc = subprocess.run(
        [PYTHON, *SERVE, *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "ERROR" in line or "error:" in line]


def test_a_second_server_on_the_same_port_is_refused(server: ServerProcess, store: Path) -> None:
    """Granian shares ports with SO_REUSEPORT: a second iot-config must not split the traffic."""
    body = put_body({"deviceName": "first"})
    assert call(server.port, "PUT", f"/api/configs/{MAC}", body, JSON_HEADERS)[0] in (200, 201)
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
    answers = [call(server.port, "GET", f"/esp32/config/{MAC}.json")[0] for _ in range(16)]
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
    server = ServerProcess(*args, log_path=tmp_path / "server.log", port=port, wait=False)
    try:
        deadline = time.monotonic() + 30
        while "serving http://" not in server.log() and time.monotonic() < deadline:
            assert server.proc.poll() is None, server.log()
            time.sleep(0.05)
        line = next(x for x in server.log().splitlines() if "serving http://" in x)
        assert f"http://127.0.0.1:{port}/" in line or f"http://[::1]:{port}/" in line
        if "127.0.0.1" in line:
            assert server.wait_ready()
        assert server.terminate() == 0
    finally:
        server.stop()


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

    def send(index: int) -> None:
        method, path, body = requests[index]
        start.wait(30)
        try:
            statuses[index] = call(port, method, path, body, JSON_HEADERS if body else None)[0]
        except (OSError, http.client.HTTPException):
            statuses[index] = -1

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses


def test_bursts_of_writes_are_never_shed(server: ServerProcess, store: Path) -> None:
    """200 concurrent PUTs to one MAC (queued on its lock), then to 200 MACs, with device reads
    in between: all succeed on a local disk, however long the queue."""
    body = put_body({"n": 0})
    assert call(server.port, "PUT", f"/api/configs/{MAC}", body, JSON_HEADERS)[0] in (200, 201)
    one_mac: list[tuple[str, str, bytes | None]] = [
        ("PUT", f"/api/configs/{MAC}", put_body({"n": i})) for i in range(200)
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
    env = {"IOT_CONFIG_ACCESS_LOG": "on", "IOT_CONFIG_LOG_FORMAT": "json"}
    log = tmp_path / "server.log"
    with ServerProcess("--store", str(store), log_path=log, env=env) as srv:
        port = srv.port
        body = put_body({"deviceName": "logged"})
        sent = [
            ("PUT", f"/api/configs/{MAC}", body, "rid-put"),
            ("GET", f"/esp32/config/{MAC}.json", None, "rid-device"),
            ("GET", "/esp32/config/not-a-mac.json", None, "rid-bad-mac"),
            ("GET", "/no/such/route", None, "rid-unmatched"),
            ("DELETE", "/api/health/live", None, "rid-wrong-method"),
        ]
        for method, path, payload, rid in sent:
            headers = {"X-Request-ID": rid, "Content-Type": "application/json"}
            call(port, method, path, payload, headers)
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


def test_access_log_is_off_by_default(server: ServerProcess) -> None:
    call(server.port, "GET", "/api/health/live")
    assert "iot_config_server.access" not in server.log()
