"""Load on loopback, bounded in time: a mixed-traffic soak with wrk, and slow-header clients.

Soak: 90 % device GETs (half revalidating with If-None-Match, so a mix of 200 and 304), 8 % admin
GETs (listing and single config), 2 % PUTs, from wrk at as many requests per second as the machine
gives (closed loop, fixed connection count). Zero errors allowed; the server's RSS is read before
and after and must stay flat. ~10 s in the short mode, 10 minutes in the full one.

Slow clients: 200 connections send their request headers one byte per second while a separate
client keeps fetching a device config; its p99 is compared with the same client's p99 without the
attack.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest
from support import JSON_HEADERS, ServerProcess, call, put_body, tool

from iot_config_core import encode_document

from .conftest import Figure
from .support import QUIET, scaled

WRK = tool("wrk")
DEVICES = 200
ADMIN_MACS = 10


def _device_mac(i: int) -> str:
    h = f"{0x020000000000 + i:012x}"
    return "-".join(h[j : j + 2] for j in range(0, 12, 2))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    root = tmp_path / "configs"
    root.mkdir()
    etags = {}
    for i in range(DEVICES):  # written as files, the way the share is filled in production
        mac = _device_mac(i)
        data = encode_document({"deviceName": f"dev{i}", "enableOTA": i % 3 == 0, "n": i})
        (root / f"{mac}.json").write_bytes(data)
        etags[mac] = hashlib.md5(data, usedforsecurity=False).hexdigest()
    server = ServerProcess("--store", str(root), log_path=tmp_path / "server.log", env=QUIET)
    yield server, etags
    server.stop()


LUA = """
local devices = {%(devices)s}
local etags = {%(etags)s}
local admin = {%(admin)s}
local counter = 0
math.randomseed(%(seed)d)
request = function()
  counter = counter + 1
  local r = math.random(100)
  if r <= 90 then
    local i = math.random(#devices)
    local path = "/esp32/config/" .. devices[i] .. ".json"
    if r <= 45 then
      return wrk.format("GET", path, {["If-None-Match"] = '"' .. etags[i] .. '"'})
    end
    return wrk.format("GET", path)
  elseif r <= 98 then
    if r <= 94 then
      return wrk.format("GET", "/api/configs")
    end
    return wrk.format("GET", "/api/configs/" .. devices[math.random(#devices)])
  end
  local body = '{"content": {"deviceName": "admin", "n": ' .. counter .. '}}'
  return wrk.format("PUT", "/api/configs/" .. admin[math.random(#admin)],
    {["Content-Type"] = "application/json"}, body)
end

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("LATENCY_US p50=%%d p90=%%d p99=%%d max=%%d\\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  io.write(string.format("ERRORS connect=%%d read=%%d write=%%d status=%%d timeout=%%d\\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout))
  io.write(string.format("TOTAL requests=%%d duration_us=%%d\\n",
    summary.requests, summary.duration))
end
"""


def _lua(etags: dict[str, str], seed: int) -> str:
    macs = list(etags)
    return LUA % {
        "devices": ", ".join(f'"{m}"' for m in macs),
        "etags": ", ".join(f'"{etags[m]}"' for m in macs),
        "admin": ", ".join(f'"02-00-00-00-ff-{i:02x}"' for i in range(ADMIN_MACS)),
        "seed": seed,
    }


def _parse_wrk(output: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for key, value in re.findall(r"(\w+)=(\d+)", output):
        values[key] = int(value)
    return values


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (apt-get install wrk)")
def test_mixed_traffic_soak(
    fleet: tuple[ServerProcess, dict[str, str]], tmp_path: Path, figure: Figure
) -> None:
    server, etags = fleet
    assert WRK is not None
    for i in range(ADMIN_MACS):
        mac = f"02-00-00-00-ff-{i:02x}"
        server.request("PUT", f"/api/configs/{mac}", put_body({"n": 0}), JSON_HEADERS)
    script = tmp_path / "mix.lua"
    script.write_text(_lua(etags, 7))
    url = f"http://127.0.0.1:{server.port}"
    # Warm-up: caches filled, threads started; RSS measured after it is the baseline.
    subprocess.run(
        [WRK, "-t1", "-c16", "-d1s", "-s", str(script), url],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    rss_start = server.rss_kib()
    seconds = int(scaled(5, 600))
    done = subprocess.run(
        [WRK, "-t1", "-c32", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    rss_end = server.rss_kib()
    stats = _parse_wrk(done.stdout)
    errors = {k: stats[k] for k in ("connect", "read", "write", "status", "timeout")}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    requests = stats["requests"]
    rate = requests / (stats["duration_us"] / 1e6)
    figure("soak seconds", seconds)
    figure("soak requests", requests)
    figure("soak req/s", round(rate))
    figure("soak latency p50/p99 ms", f"{stats['p50'] / 1000:.2f}/{stats['p99'] / 1000:.2f}")
    figure("soak errors", sum(errors.values()) + (int(non_2xx.group(1)) if non_2xx else 0))
    figure("server RSS start/end MiB", f"{rss_start / 1024:.1f}/{rss_end / 1024:.1f}")
    assert errors == dict.fromkeys(errors, 0), done.stdout
    assert non_2xx is None, done.stdout
    # Flat: no growth beyond a small allowance for allocator noise and one-off caches.
    assert rss_end - rss_start < max(0.25 * rss_start, 16 * 1024), (rss_start, rss_end)
    listing = json.loads(server.request("GET", "/api/configs")[2])
    assert listing["count"] >= DEVICES


class SlowClients:
    """``count`` connections that each trickle a request's headers one byte per ``interval``."""

    def __init__(self, port: int, count: int, interval: float) -> None:
        self._port = port
        self._count = count
        self._interval = interval
        self._stop = threading.Event()
        self.opened = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        request = f"GET /esp32/config/{_device_mac(0)}.json HTTP/1.1\r\nHost: x\r\n".encode()
        request += b"X-Slow: " + b"a" * 10_000  # never finished: the headers never end
        sockets: list[tuple[socket.socket, int]] = []
        try:
            for _ in range(self._count):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", self._port))
                sockets.append((sock, 0))
                self.opened += 1
            while not self._stop.wait(self._interval):
                alive = []
                for sock, pos in sockets:
                    try:
                        sock.send(request[pos : pos + 1])
                        alive.append((sock, pos + 1))
                    except BlockingIOError:
                        alive.append((sock, pos))
                    except OSError:
                        self.dropped += 1
                        sock.close()
                sockets = alive
        finally:
            for sock, _ in sockets:
                sock.close()


def _device_latencies(port: int, seconds: float) -> tuple[list[float], int]:
    out: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            status = call(port, "GET", f"/esp32/config/{_device_mac(1)}.json", timeout=3)[0]
        except OSError:
            errors += 1
            continue
        out.append(time.perf_counter() - started)
        if status != 200:
            errors += 1
    return out, errors


def _p99(values: list[float]) -> float:
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_slow_header_clients_do_not_starve_devices(
    fleet: tuple[ServerProcess, dict[str, str]], figure: Figure
) -> None:
    server, _ = fleet
    seconds = scaled(2, 60)
    baseline, base_errors = _device_latencies(server.port, seconds)
    with SlowClients(server.port, 200, 1.0) as attack:
        time.sleep(1.5)  # every slow connection open and holding a slot
        attacked, attack_errors = _device_latencies(server.port, seconds)
    p99_base, p99_attack = _p99(baseline), _p99(attacked)
    figure(
        "device GET p99 ms without/with 200 slow clients",
        f"{p99_base * 1000:.2f}/{p99_attack * 1000:.2f}",
    )
    figure("device GETs during attack", len(attacked))
    figure(
        "device GET median ms without/with",
        f"{statistics.median(baseline) * 1000:.2f}/"
        f"{statistics.median(attacked or [float('inf')]) * 1000:.2f}",
    )
    figure("slow connections opened/dropped by server", f"{attack.opened}/{attack.dropped}")
    assert base_errors == 0
    assert attack_errors == 0, f"{attack_errors} device requests failed during the attack"
    assert len(attacked) > 0.25 * len(baseline), "device throughput collapsed during the attack"
    assert p99_attack < max(10 * p99_base, 0.1), (p99_base, p99_attack)
