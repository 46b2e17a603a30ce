"""Server benchmark: the real ``iot-config serve`` under wrk, against two baselines in the same run.

The server is pinned to CPU 0 and wrk to CPU 1 (``taskset``), so one core serves and one core
loads. Baselines, measured interleaved with the subject so machine drift hits all alike:

- ``nginx static``: nginx serving the same device file from disk (the speed of light);
- ``bare bottle``: a one-route Bottle app that reads the file per request, on exactly the server
  configuration ``iot-config serve`` uses (`iot_config_server.serve.run_wsgi`).

Then the real app: device GET (200 and 304), admin GET, PUT, list (200 and 10,000 configs),
health; req/s, p50/p99 latency and errors. Then fleets of 10,000 and 100,000 configs: the list
warm (200, 304 on its ETag, a page of 100) beside the stat of every file measured in between, the
same with the inotify watch on and off (``IOT_CONFIG_LIST_WATCH``, also in-process), and
the memory (RSS and PSS) of every server process after lists, device GETs and PUTs. Numbers, not
asserts: a human compares them with the targets printed beside them.

``--compare-servers`` instead measures the candidate WSGI servers (waitress, gunicorn sync and
gthread, cheroot, granian st/mt) on the bare route, plus robustness probes (SIGTERM with a request
in flight, 50 header-trickling clients, RSS): how the production server was chosen.

Run: ``python tests/benchmarks/bench_server.py [--quick] [--device-only] [--json PATH]
[--scrape-only] [--list-watch-only] [--compare-servers] [--store-dir DIR] [--fleets N ...]``;
``--quick --device-only`` gives the device GET vs bare ratio soonest. ``--store-dir`` puts the
store (and so every floor: the stat, the durable write, the file nginx serves) on another
filesystem, e.g. a ceph-fuse mount, while the scratch files stay local; ``--fleets`` chooses the
fleet sizes.
Needs ``wrk`` and ``nginx`` (Debian: ``apt-get install -y wrk nginx``); parts that need a missing
tool are skipped with a message.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _harness

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # tests/: the helpers shared with the tests
import support  # noqa: E402
from support import PYTHON, REPO, free_port, tool  # noqa: E402

WRK = tool("wrk")
TOKEN = "bench-admin-token"
HOT_MAC = "aa-bb-cc-00-00-01"
# A typical device config.
HOT_CONTENT: dict[str, Any] = {
    "deviceName": "kitchen-sensor",
    "deviceEntityId": "sensor.kitchen",
    "enableOTA": False,
    "wifi": {"ssid": "iot-net", "hidden": False},
    "mqtt": {"host": "mqtt.example.internal", "port": 1883, "topic": "home/kitchen"},
    "pollSeconds": 300,
    "pins": [4, 5, 12, 13, 14],
}


# -- processes ------------------------------------------------------------------------------------


def can_pin() -> bool:
    return tool("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if can_pin() else argv


def child_env(**extra: str) -> dict[str, str]:
    """`support.child_env`, with this directory importable too (the bare apps live here)."""
    env = support.child_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env["PYTHONPATH"]])
    return env


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    index = 0
    while index < len(pids):  # grows while we walk it: breadth-first over children
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pids[index]}/task"):
                children = Path(f"/proc/{pids[index]}/task/{task}/children").read_text()
                pids.extend(int(child) for child in children.split())
        index += 1
    return pids


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Proc:
    """A server child process pinned to CPU 0, ready once ``probe_path`` answers."""

    def __init__(
        self, name: str, argv: list[str], port: int, workdir: Path, *, env: dict[str, str]
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = workdir / f"{name.replace(' ', '_')}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            pinned(0, argv), cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(self.port, path, timeout=2)[0] == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout} s")

    def rss(self) -> tuple[float, float]:
        """(all processes, largest single process) in MiB: the supervisor and the worker."""
        sizes = [rss_mb(pid) for pid in process_tree(self.proc.pid)]
        return sum(sizes), max(sizes, default=0.0)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._log.close()
                return None
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(proc: Proc, ready_path: str) -> Iterator[Proc]:
    try:
        proc.wait_ready(ready_path)
        yield proc
    finally:
        proc.stop()


# -- the bare baseline app ------------------------------------------------------------------------


def bare_app(path: str) -> Any:
    """One Bottle route reading one file per request: the floor for a Python WSGI file server."""
    import bottle  # noqa: PLC0415 -- only in server processes

    app = bottle.Bottle()

    def read_file() -> bytes:
        with open(path, "rb") as fh:
            data = fh.read()
        bottle.response.content_type = "application/json"
        return data

    def slow() -> bytes:
        time.sleep(2)
        return b"done"

    app.route("/file", "GET", read_file)
    app.route("/slow", "GET", slow)

    return app


def bare_app_from_env() -> Any:
    """`bare_app` for servers that import by path (gunicorn, waitress-serve, granian)."""
    return bare_app(os.environ["BENCH_BARE_FILE"])


def bare_server(port: int, file: Path, workdir: Path, threads: int) -> Proc:
    """The bare app on the production server configuration (`serve.run_wsgi`)."""
    code = (
        "import functools, bench_server; from iot_config_server.serve import run_wsgi; "
        f"raise SystemExit(run_wsgi(functools.partial(bench_server.bare_app, {str(file)!r}), "
        f"host='127.0.0.1', port={port}, threads={threads}, workers=1, log_level='WARNING', "
        "description='bench_server:bare_app'))"
    )
    return Proc("bare bottle", [PYTHON, "-c", code], port, workdir, env=child_env())


def nginx_server(port: int, file: Path, workdir: Path) -> Proc | None:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        print("nginx not installed: skipping the static-file baseline (apt-get install nginx)")
        return None
    root = workdir / "nginx"
    (root / "www").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, root / "www" / "file")
    temps = " ".join(
        f"{kind}_temp_path {root}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    temps += f" uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;"
    conf = root / "nginx.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {root}/nginx.pid; error_log {root}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; default_type application/json; {temps}\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}/www; }} }}\n"
    )
    return Proc("nginx static", [nginx, "-c", str(conf)], port, workdir, env=child_env())


def app_server(
    port: int, store: Path, workdir: Path, threads: int, list_watch: str = "auto"
) -> Proc:
    argv = [PYTHON, "-m", "iot_config_server.cli", "serve", "--store", str(store)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--threads", str(threads)]
    argv += ["--log-level", "WARNING"]
    env = child_env(IOT_CONFIG_ADMIN_TOKENS=TOKEN, IOT_CONFIG_LIST_WATCH=list_watch)
    return Proc("iot-config serve", argv, port, workdir, env=env)


# -- wrk ------------------------------------------------------------------------------------------

DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  local f = io.open("%(out)s", "w")
  f:write(string.format('{"requests": %%.0f, "duration_us": %%.0f, "connect": %%.0f, ' ..
    '"read": %%.0f, "write": %%.0f, "status": %%.0f, "timeout": %%.0f, "p50_us": %%.1f, ' ..
    '"p99_us": %%.1f}', summary.requests, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
  f:close()
end
"""

PUT_LUA = """
local n = 0
request = function()
  n = n + 1
  local mac = string.format("bb-00-00-00-%%02x-%%02x", math.floor((n %% 1000) / 256), n %% 256)
  local body = '{"content": {"deviceName": "bench", "enableOTA": false, "counter": ' .. n .. '}}'
  return wrk.format("PUT", "/api/configs/" .. mac, {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %(token)s"}, body)
end
"""


@dataclass
class Load:
    """One wrk run's outcome."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def run_wrk(
    port: int,
    path: str,
    seconds: float,
    connections: int,
    workdir: Path,
    *,
    headers: dict[str, str] | None = None,
    lua: str = "",
) -> Load:
    out = workdir / "wrk-result.json"
    out.unlink(missing_ok=True)
    script = workdir / "wrk.lua"
    script.write_text(lua + DONE_LUA % {"out": out})
    assert WRK is not None
    argv = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    subprocess.run(pinned(1, argv), capture_output=True, timeout=seconds + 60, check=True)
    result = json.loads(out.read_text())
    errors = sum(int(result[key]) for key in ("connect", "read", "write", "status", "timeout"))
    return Load(
        rps=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=errors,
        requests=int(result["requests"]),
    )


def median_load(loads: list[Load]) -> Load:
    """The run with the median throughput (its latencies belong to the same run)."""
    ordered = sorted(loads, key=lambda load: load.rps)
    middle = ordered[len(ordered) // 2]
    return Load(
        middle.rps, middle.p50_ms, middle.p99_ms, sum(x.errors for x in loads), middle.requests
    )


# -- report ---------------------------------------------------------------------------------------


@dataclass
class Line:
    name: str
    load: Load | None = None
    value: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Table:
    title: str
    parameters: dict[str, Any]
    lines: list[Line] = field(default_factory=list)

    def add(self, line: Line) -> Line:
        self.lines.append(line)
        print(f"  {self._row(line)}", flush=True)
        return line

    @staticmethod
    def _cells(cells: list[str]) -> str:
        widths = (26, 14, 7, 8, 6, 9, 24, 3)
        padded = [
            cell.ljust(width) if index in (0, 6, 7) else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join([*padded, *cells[len(widths) :]]).rstrip()

    @classmethod
    def _row(cls, line: Line) -> str:
        load = line.load
        return cls._cells(
            [
                line.name,
                f"{load.rps:,.0f} req/s" if load else line.value,
                f"{load.p50_ms:.2f}" if load else "-",
                f"{load.p99_ms:.2f}" if load else "-",
                str(load.errors) if load else "-",
                line.ratio,
                line.target,
                {None: "-", True: "yes", False: "NO"}[line.met],
                line.note,
            ]
        )

    def print(self) -> None:
        params = ", ".join(f"{k}={v}" for k, v in self.parameters.items())
        print(f"\n== {self.title} ({params})")
        header = ["benchmark", "req/s | value", "p50 ms", "p99 ms", "errors", "ratio", "target"]
        print(self._cells([*header, "met", "note"]))
        for line in self.lines:
            print(self._row(line))

    def write_json(self, path: Path) -> None:
        data = {
            "title": self.title,
            "python": sys.version.split()[0],
            "parameters": self.parameters,
            "lines": [asdict(line) for line in self.lines],
        }
        path.write_text(json.dumps(data, indent=2) + "\n")


# -- the store ------------------------------------------------------------------------------------


def fill_store(store: Path, count: int) -> None:
    """Make the store hold ``count`` configs (the hot one included), written directly as files.

    Configs the PUT benchmark made (``bb-*``) are removed so each fleet size is exact.
    """
    from iot_config_core import encode_document  # noqa: PLC0415

    store.mkdir(parents=True, exist_ok=True)
    hot = store / f"{HOT_MAC}.json"
    if not hot.exists():
        hot.write_bytes(encode_document(HOT_CONTENT))
    for name in os.listdir(store):
        if name.startswith("bb-"):
            (store / name).unlink()
    existing = sum(1 for name in os.listdir(store) if name.startswith("cc-"))
    for index in range(existing, count - 1):
        mac = index.to_bytes(4, "big").hex("-")
        content = {**HOT_CONTENT, "deviceName": f"device-{index}", "pollSeconds": index % 600}
        (store / f"cc-00-{mac}.json").write_bytes(encode_document(content))


def write_floor(directory: Path, repeat: int) -> float:
    """Median seconds of the durable write every PUT must do: temp, write, fsync, rename, fsync."""
    from iot_config_core import encode_document  # noqa: PLC0415

    data = encode_document({**HOT_CONTENT, "counter": 1})

    def floor() -> None:
        _harness.durable_write(directory, "floor.json", data)

    timing = _harness.measure({"floor": floor}, repeat=repeat)["floor"]
    (directory / "floor.json").unlink(missing_ok=True)
    return timing.median


def warm_latencies(port: int, path: str, count: int, headers: dict[str, str]) -> list[float]:
    """Sequential requests on one keep-alive connection, after one warm-up request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    samples: list[float] = []
    try:
        for index in range(count + 1):
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status}")
            if index:
                samples.append(time.perf_counter() - started)
    finally:
        conn.close()
    return samples


def stat_floor(store: Path) -> float:
    """Seconds to stat every file of the store once: the metadata scan a scrape cannot avoid."""
    started = time.perf_counter()
    for entry in os.scandir(store):
        entry.stat()
    return time.perf_counter() - started


def scraped_count(body: bytes) -> float | None:
    """The ``iot_config_configs`` sample of a scrape (absent until a count was taken)."""
    for line in body.decode().splitlines():
        if line.startswith("iot_config_configs "):
            return float(line.split()[1])
    return None


def counting_scrapes(port: int, count: int, repeat: int) -> list[float]:
    """Seconds of ``repeat`` scrapes that each show the full count, after the server's first one.

    A scrape waits only briefly for the count and otherwise shows the previous one, so the
    timed scrapes start once the start-up listing is done, and each must carry ``count``.
    """
    deadline = time.monotonic() + 300
    while scraped_count(http_get(port, "/metrics", {})[1]) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"/metrics never showed {count} configs")
        time.sleep(0.2)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        status, body = http_get(port, "/metrics", {})
        samples.append(time.perf_counter() - started)
        if status != 200 or scraped_count(body) != count:
            raise RuntimeError(f"/metrics: {status}, count {scraped_count(body)} not {count}")
    return samples


def scrape_line(port: int, store: Path, count: int, repeat: int) -> Line:
    """Warm ``/metrics`` scrapes (each counts the store's valid configs) beside the stat floor."""
    scrapes = counting_scrapes(port, count, repeat)
    floors = [stat_floor(store) for _ in range(repeat)]
    median = statistics.median(scrapes) * 1000
    floor = statistics.median(floors) * 1000
    return Line(
        f"/metrics of {count:,} warm single",
        value=f"{median:.1f} ms",
        target="<= 50 ms",
        met=median <= 50,
        note=f"median of {repeat} sequential; stat of every file (floor) {floor:.1f} ms",
    )


# -- the benchmark --------------------------------------------------------------------------------


def check_status(port: int, path: str, headers: dict[str, str], expected: int) -> None:
    status, body = http_get(port, path, headers)
    if status != expected:
        raise RuntimeError(f"GET {path} answered {status}, expected {expected}: {body[:200]!r}")


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def bench_scrape(args: Any, workdir: Path, store: Path) -> Table:
    """Only the warm ``/metrics`` scrape of a 10,000-config store, beside its stat floor."""
    table = Table("scrape", {"configs": 10_000})
    fill_store(store, 10_000)
    server = app_server(free_port(), store, workdir, 8)
    with running(server, "/api/health/live"):
        table.add(scrape_line(server.port, store, 10_000, 10 if args.quick else 30))
    return table


def watch_lines(
    store: Path, size: int, workdir: Path, list_target: float, quick: bool
) -> list[Line]:
    """Warm listings with the inotify watch (``auto``) and without (``off``), beside the floor.

    One server per mode (HTTP 200 and 304) and one in-process store per mode
    (`ConfigStore.listing`), all interleaved with the stat of every file, so each figure and its
    floor see the same machine.
    """
    from iot_config_core import encode_document, open_store  # noqa: PLC0415

    auth = {"Authorization": f"Bearer {TOKEN}"}
    repeat = 5 if quick or size > 20_000 else 20
    modes = ("auto", "off")
    servers = {mode: app_server(free_port(), store, workdir, 4, mode) for mode in modes}
    stores = {mode: open_store(str(store), list_watch=mode == "auto") for mode in modes}
    samples: dict[str, list[float]] = {}
    floors: list[float] = []
    with running(servers["auto"], "/api/health/live"), running(servers["off"], "/api/health/live"):
        etags = {}
        for mode in modes:
            list_timings(servers[mode].port, "/api/configs", 1, auth)  # the cold listing
            etags[mode] = http_get_etag(servers[mode].port, "/api/configs", auth)
            stores[mode].listing()
        for _ in range(repeat):
            floors.append(stat_floor(store))
            for mode in modes:
                port = servers[mode].port
                samples.setdefault(f"{mode} 200", []).extend(
                    list_timings(port, "/api/configs", 1, auth)[0]
                )
                headers = {**auth, "If-None-Match": f'"{etags[mode]}"'}
                took, status, _ = list_timings(port, "/api/configs", 1, headers)
                if status != 304:
                    raise RuntimeError(f"list ({mode}) with its ETag answered {status}")
                samples.setdefault(f"{mode} 304", []).extend(took)
                started = time.perf_counter()
                stores[mode].listing()
                samples.setdefault(f"{mode} in-process", []).append(time.perf_counter() - started)
        # One config changed before each listing: a stat, a read and the sort of the summaries.
        hot = store / f"{HOT_MAC}.json"
        for turn in range(repeat):
            for mode in modes:
                content = {**HOT_CONTENT, "pollSeconds": turn, "deviceName": mode}
                _harness.durable_write(store, hot.name, encode_document(content))
                started = time.perf_counter()
                stores[mode].listing()
                samples.setdefault(f"{mode} in-process, one changed", []).append(
                    time.perf_counter() - started
                )
    floor = statistics.median(floors) * 1000
    off = {kind: statistics.median(samples[f"off {kind}"]) * 1000 for kind in ("200", "304")}
    lines = []
    for key, taken in samples.items():
        mode, kind = key.split(" ", 1)
        median = statistics.median(taken) * 1000
        note = f"median of {len(taken)}; stat of every file (floor) {floor:,.2f} ms"
        if mode == "auto" and kind in off:
            note += f"; watch off {off[kind]:,.1f} ms ({median / off[kind]:.3f}x)"
        lines.append(
            Line(
                f"list {size:,} warm {kind}, watch {mode}",
                value=f"{median:,.2f} ms",
                ratio=f"{median / floor:.3f}x fl",
                target=f"<= {list_target:,.0f} ms",
                met=median <= list_target,
                note=note + f"; load average {os.getloadavg()[0]:.1f}",
            )
        )
    for line in lines:
        print(f"  {Table._row(line)}", flush=True)  # progress as it happens
    return lines


def bench_list_watch(args: Any, workdir: Path, store: Path) -> Table:
    """Only the warm listings of 10,000 and 100,000 configs, watch on and off, beside the floor."""
    sizes = (2_000, 20_000) if args.quick else (10_000, 100_000)
    table = Table("list watch", {"sizes": sizes, "load": os.getloadavg()[0]})
    for size, target in zip(sizes, (20.0, 250.0), strict=True):
        fill_store(store, size)
        table.lines.extend(watch_lines(store, size, workdir, target, args.quick))
    return table


def bench(args: Any, workdir: Path, store: Path) -> Table:
    quick: bool = args.quick
    seconds = 3.0 if quick else 8.0
    rounds = 1 if quick else 3
    connections = 50
    threads = 8
    mid_size = 2_000 if quick else 10_000
    big_size = 20_000 if quick else 100_000
    fleets: list[int] = args.fleets or [mid_size, big_size]
    table = Table(
        "server",
        {
            "seconds": seconds,
            "rounds": rounds,
            "connections": connections,
            "threads": threads,
            "pinned": "server cpu0, wrk cpu1" if can_pin() else "no",
        },
    )
    print(f"== server benchmark (scratch: {workdir})", flush=True)
    fill_store(store, 200)
    hot_file = store / f"{HOT_MAC}.json"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    nginx = nginx_server(free_port(), hot_file, workdir)
    bare = bare_server(free_port(), hot_file, workdir, threads)
    app = app_server(free_port(), store, workdir, threads)
    with contextlib.ExitStack() as stack:
        if nginx is not None:
            stack.enter_context(running(nginx, "/file"))
        stack.enter_context(running(bare, "/file"))
        stack.enter_context(running(app, "/api/health/live"))
        device = f"/esp32/config/{HOT_MAC}.json"
        check_status(app.port, device, {}, 200)
        etag = f'"{http_get_etag(app.port, device)}"'
        check_status(app.port, device, {"If-None-Match": etag}, 304)
        check_status(app.port, f"/api/configs/{HOT_MAC}", auth, 200)

        # Interleaved rounds: the two baselines and the device GET see the same machine.
        subjects: dict[str, tuple[Proc, str, dict[str, str]]] = {
            "bare bottle file route": (bare, "/file", {}),
            "device GET 200": (app, device, {}),
        }
        if nginx is not None:
            subjects = {"nginx static file": (nginx, "/file", {}), **subjects}
        samples: dict[str, list[Load]] = {name: [] for name in subjects}
        for proc, path, headers in subjects.values():  # warm-up
            run_wrk(proc.port, path, 1, connections, workdir, headers=headers)
        for _ in range(rounds):
            for name, (proc, path, headers) in subjects.items():
                samples[name].append(
                    run_wrk(proc.port, path, seconds, connections, workdir, headers=headers)
                )
        loads = {name: median_load(runs) for name, runs in samples.items()}
        bare_rps = loads["bare bottle file route"].rps
        if nginx is not None:
            table.add(Line("nginx static file", loads["nginx static file"], note="speed of light"))
        table.add(
            Line(
                "bare bottle file route",
                loads["bare bottle file route"],
                ratio="1.00x",
                note="baseline",
            )
        )
        dev = loads["device GET 200"]
        table.add(
            Line(
                "device GET 200",
                dev,
                ratio=fmt_ratio(dev.rps / bare_rps),
                target=">=0.9x bare, >=20,000",
                met=dev.rps >= 0.9 * bare_rps and dev.rps >= 20_000 and dev.errors == 0,
            )
        )
        if args.device_only:
            return table
        r304 = run_wrk(
            app.port, device, seconds, connections, workdir, headers={"If-None-Match": etag}
        )
        table.add(
            Line(
                "device GET 304",
                r304,
                ratio=fmt_ratio(r304.rps / bare_rps),
                target=">= device GET 200",
                met=r304.rps >= dev.rps and r304.errors == 0,
            )
        )
        admin = run_wrk(
            app.port, f"/api/configs/{HOT_MAC}", seconds, connections, workdir, headers=auth
        )
        table.add(
            Line(
                "admin GET",
                admin,
                ratio=fmt_ratio(admin.rps / bare_rps),
                met=None if admin.errors == 0 else False,
            )
        )
        health = run_wrk(app.port, "/api/health/live", seconds, connections, workdir)
        table.add(Line("health/live", health, ratio=fmt_ratio(health.rps / bare_rps)))
        list_small = run_wrk(app.port, "/api/configs", seconds, 8, workdir, headers=auth)
        table.add(Line("list 200 (c=8)", list_small, ratio=fmt_ratio(list_small.rps / bare_rps)))

        floor = write_floor(store.parent, 20 if quick else 100)
        floor_rps = 1 / floor
        put = run_wrk(app.port, "/", seconds, 16, workdir, lua=PUT_LUA % {"token": TOKEN})
        table.add(
            Line(
                "PUT (c=16, 1000 MACs)",
                put,
                ratio=f"{put.rps / floor_rps:.2f}x fl",
                target=">=1,000 or >=floor/1.3",
                met=(put.rps >= 1000 or put.rps >= floor_rps / 1.3) and put.errors == 0,
                note=f"floor (write+fsync+rename+dir fsync): {floor * 1000:.2f} ms, "
                f"{floor_rps:,.0f}/s sequential",
            )
        )

    # Bigger fleets: a fresh server each; memory after lists, device GETs and PUTs.
    for size in fleets:
        # the targets: 20 ms and 80 MiB at 10,000; 250 ms and 200 MiB at 100,000
        list_target, memory_target = (20.0, 80.0) if size <= mid_size else (250.0, 200.0)
        fill_store(store, size)
        server = app_server(free_port(), store, workdir, threads)
        with running(server, "/api/health/live"):
            table.lines.extend(fleet_lines(server, store, size, list_target, memory_target, quick))
            if size == fleets[-1] and size > mid_size:
                table.add(simulator_line(server.port, size - 1, quick))
            if size == mid_size:
                table.add(scrape_line(server.port, store, size, 10 if quick else 30))
                loaded = run_wrk(server.port, "/api/configs", seconds, 4, workdir, headers=auth)
                table.add(
                    Line(
                        f"list {size:,} (c=4)",
                        loaded,
                        target="p99 <= 100 ms",
                        met=loaded.p99_ms <= 100 and loaded.errors == 0,
                    )
                )
        table.lines.extend(watch_lines(store, size, workdir, list_target, quick))
    return table


def process_memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process in MiB; PSS splits the pages a worker shares with its parent."""
    rss = rss_mb(pid)
    pss = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    return rss, pss


def memory_note(server: Proc) -> tuple[float, float, str]:
    """Total RSS and PSS of the server's processes, and each process's figures."""
    sizes = [process_memory(pid) for pid in process_tree(server.proc.pid)]
    each = ", ".join(f"{rss:.0f}/{pss:.0f}" for rss, pss in sizes)
    return sum(r for r, _ in sizes), sum(p for _, p in sizes), each


def list_timings(
    port: int, path: str, count: int, headers: dict[str, str]
) -> tuple[list[float], int, int]:
    """Sequential GETs of ``path`` on one connection: seconds each, last status, body bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    samples: list[float] = []
    status = size = 0
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            samples.append(time.perf_counter() - started)
            status, size = response.status, len(body)
    finally:
        conn.close()
    return samples, status, size


def exercise(port: int, store: Path, gets: int, puts: int) -> None:
    """Device GETs of ``gets`` configs and ``puts`` admin PUTs: what a server's day is made of."""
    names = sorted(name for name in os.listdir(store) if name.endswith(".json"))[:gets]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        for name in names:
            conn.request("GET", f"/esp32/config/{name}")
            conn.getresponse().read()
        for index, name in enumerate(names[:puts]):
            body = json.dumps({"content": {**HOT_CONTENT, "counter": index}})
            conn.request("PUT", f"/api/configs/{name[:-5]}", body=body, headers=auth)
            conn.getresponse().read()
    finally:
        conn.close()


def fleet_lines(
    server: Proc, store: Path, size: int, list_target: float, memory_target: float, quick: bool
) -> list[Line]:
    """List 200/304/page of a fleet of ``size`` beside the stat floor; memory of every process."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    repeat = 5 if quick or size > 20_000 else 20
    lines: list[Line] = []
    idle_rss, idle_pss, _ = memory_note(server)
    cold, status, length = list_timings(server.port, "/api/configs", 1, auth)
    if status != 200:
        raise RuntimeError(f"list of {size}: {status}")
    exercise(server.port, store, 3000, 200)
    etag = http_get_etag(server.port, "/api/configs", auth)
    floors: list[float] = []
    warm: list[float] = []
    not_modified: list[float] = []
    paged: list[float] = []
    for _ in range(repeat):  # interleaved, so the floor sees the same machine as each answer
        floors.append(stat_floor(store))
        warm += list_timings(server.port, "/api/configs", 1, auth)[0]
        headers = {**auth, "If-None-Match": f'"{etag}"'}
        took, status, _ = list_timings(server.port, "/api/configs", 1, headers)
        if status != 304:
            raise RuntimeError(f"list with its ETag answered {status}")
        not_modified += took
        paged += list_timings(server.port, "/api/configs?limit=100", 1, auth)[0]
    floor = statistics.median(floors) * 1000
    for name, samples, target in (
        (f"list {size:,} warm 200", warm, list_target),
        (f"list {size:,} warm 304", not_modified, list_target),
        (f"list {size:,} page of 100", paged, list_target),
    ):
        median = statistics.median(samples) * 1000
        lines.append(
            Line(
                name,
                value=f"{median:,.1f} ms",
                ratio=f"{median / floor:.2f}x fl",
                target=f"<= {list_target:,.0f} ms",
                met=median <= target,
                note=f"median of {len(samples)}; stat of every file (floor) {floor:,.1f} ms",
            )
        )
    rss, pss, each = memory_note(server)
    lines.append(
        Line(
            f"memory at {size:,}",
            value=f"{rss:.0f} MiB",
            target=f"<= {memory_target:.0f} MiB (all)",
            met=rss <= memory_target,
            note=f"RSS of every process after lists, 3,000 device GETs and 200 PUTs; PSS "
            f"{pss:.0f} MiB; per process RSS/PSS {each}; idle {idle_rss:.0f}/{idle_pss:.0f}; "
            f"cold list {cold[0] * 1000:,.0f} ms, {length / 1e6:.1f} MB",
        )
    )
    for line in lines:
        print(f"  {Table._row(line)}", flush=True)  # progress as it happens
    return lines


def simulator_line(port: int, devices: int, quick: bool) -> Line:
    """``examples/fleet_simulator.py``: every config's device polls (a 200, then 304s) at once."""
    polls = 2 if quick else 3
    argv = [PYTHON, str(REPO / "examples" / "fleet_simulator.py"), "--url"]
    argv += [f"http://127.0.0.1:{port}", "--devices", str(devices), "--first-mac"]
    argv += ["cc-00-00-00-00-00", "--connections", "100", "--polls", str(polls)]
    argv += ["--interval", "0", "--duration", "300", "--json"]
    done = subprocess.run(
        pinned(1, argv), capture_output=True, text=True, env=child_env(), check=False, timeout=400
    )
    report = json.loads(done.stdout)
    rate = report["requests"] / report["seconds"]
    return Line(
        f"simulator {devices:,} devices",
        value=f"{rate:,.0f} req/s",
        met=None if report["error"] == 0 and report["other"] == 0 else False,
        note=f"{polls} polls each on 100 connections, unpaced: p50 {report['p50_ms']:.1f} ms, "
        f"p99 {report['p99_ms']:.1f} ms; 200: {report['200']:,}, 304: {report['304']:,}, "
        f"errors {report['error']}, other {report['other']}",
    )


def http_get_etag(port: int, path: str, headers: dict[str, str] | None = None) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        etag = response.getheader("ETag")
    finally:
        conn.close()
    if etag is None:
        raise RuntimeError(f"GET {path}: no ETag")
    return etag.strip('"')


# -- choosing the server --------------------------------------------------------------------------


def candidates(port: int, threads: int) -> dict[str, list[str]]:
    """Command lines serving `bare_app_from_env` on ``port``; only servers that are installed."""
    found: dict[str, list[str]] = {}
    target = "bench_server:bare_app_from_env"
    if waitress := tool("waitress-serve"):
        found["waitress"] = [waitress, "--host", "127.0.0.1", f"--port={port}"]
        found["waitress"] += [f"--threads={threads}", "--call", target]
    if gunicorn := tool("gunicorn"):
        base = [gunicorn, "-b", f"127.0.0.1:{port}", "-w", "1"]
        found["gunicorn sync"] = [*base, "-k", "sync", f"{target}()"]
        found["gunicorn gthread"] = [
            *base,
            "-k",
            "gthread",
            "--threads",
            str(threads),
            f"{target}()",
        ]
    with contextlib.suppress(ImportError):
        import cheroot  # noqa: F401, PLC0415

        code = (
            "import signal, bench_server; from cheroot import wsgi; "
            f"s = wsgi.Server(('127.0.0.1', {port}), bench_server.bare_app_from_env(), "
            f"numthreads={threads}); signal.signal(signal.SIGTERM, lambda *a: s.stop()); s.start()"
        )
        found["cheroot"] = [PYTHON, "-c", code]
    if granian := tool("granian"):
        for mode in ("st", "mt"):
            found[f"granian {mode}"] = [
                granian, "--interface", "wsgi", "--factory", "--runtime-mode", mode,
                "--host", "127.0.0.1", "--port", str(port), "--blocking-threads", str(threads),
                "--no-log", target,
            ]  # fmt: skip
    return found


def robustness(proc: Proc) -> str:
    """Slow clients, memory under load, and SIGTERM with a request in flight."""
    port = proc.port
    trickling: list[socket.socket] = []
    stop = threading.Event()
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\n")
        trickling.append(sock)

    def trickle() -> None:
        while not stop.is_set():
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")
            stop.wait(0.5)

    thread = threading.Thread(target=trickle)
    thread.start()
    worst = 0.0
    for _ in range(10):
        started = time.perf_counter()
        try:
            ok = http_get(port, "/file", timeout=3)[0] == 200
        except OSError:
            ok = False
        worst = max(worst, time.perf_counter() - started if ok else float("inf"))
        time.sleep(0.2)
    stop.set()
    thread.join()
    for sock in trickling:
        sock.close()
    total, _ = proc.rss()
    result: dict[str, Any] = {}

    def in_flight() -> None:
        try:
            result["status"] = http_get(port, "/slow", timeout=10)[0]
        except (OSError, http.client.HTTPException) as exc:
            result["status"] = type(exc).__name__

    request = threading.Thread(target=in_flight)
    request.start()
    time.sleep(0.5)
    started = time.perf_counter()
    code = proc.stop(timeout=15)
    request.join()
    slow = "starved" if worst == float("inf") else f"{worst * 1000:.0f} ms"
    return (
        f"50 slow clients: others served in {slow}; RSS {total:.0f} MiB; SIGTERM: in-flight "
        f"{result['status']}, exit {'hung (killed)' if code is None else code} "
        f"in {time.perf_counter() - started:.1f} s"
    )


def compare_servers(args: Any, workdir: Path) -> Table:
    seconds = 3.0 if args.quick else 5.0
    rounds = 1 if args.quick else 3
    threads = 8
    fill_store(workdir / "store", 1)
    hot = workdir / "store" / f"{HOT_MAC}.json"
    table = Table(
        "WSGI servers, bare Bottle file route",
        {"seconds": seconds, "rounds": rounds, "connections": 50, "threads": threads},
    )
    procs: dict[str, Proc] = {}
    nginx = nginx_server(free_port(), hot, workdir)
    if nginx is not None:
        procs["nginx static"] = nginx
    procs["iot-config serve's runner"] = bare_server(free_port(), hot, workdir, threads)
    env = child_env(BENCH_BARE_FILE=str(hot))
    for name in candidates(0, threads):
        port = free_port()
        procs[name] = Proc(name, candidates(port, threads)[name], port, workdir, env=env)
    samples: dict[str, list[Load]] = {name: [] for name in procs}
    try:
        for proc in procs.values():
            proc.wait_ready("/file")
        for _ in range(rounds):
            for name, proc in procs.items():
                samples[name].append(run_wrk(proc.port, "/file", seconds, 50, workdir))
        for name, proc in procs.items():
            note = robustness(proc) if name != "nginx static" else "static baseline"
            table.add(Line(name, median_load(samples[name]), note=note))
    finally:
        for proc in procs.values():
            proc.stop(timeout=5)
    return table


def scratch_directory(stack: contextlib.ExitStack, parent: Path | None) -> Path:
    """A directory under ``parent`` (default: $TMPDIR) that others may read, removed at the end."""
    path = Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-server-", dir=parent))
    )
    path.chmod(0o755)  # nginx workers run as an unprivileged user
    return path


def main() -> int:
    parser = _harness.common_arguments(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--compare-servers", action="store_true", help="measure the candidate WSGI servers"
    )
    parser.add_argument(
        "--device-only",
        action="store_true",
        help="stop after the device GET against its baselines (the quickest ratio)",
    )
    parser.add_argument(
        "--scrape-only", action="store_true", help="only /metrics on a store of 10,000 configs"
    )
    parser.add_argument(
        "--list-watch-only",
        action="store_true",
        help="only warm listings of 10,000 and 100,000 configs, inotify watch on vs off",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        metavar="DIR",
        help="make the store here, e.g. on a ceph-fuse mount (default: in the scratch directory)",
    )
    parser.add_argument(
        "--fleets",
        type=int,
        nargs="+",
        metavar="N",
        help="fleet sizes to list and measure memory at (default: 10,000 and 100,000)",
    )
    args = parser.parse_args()
    if WRK is None:
        print("bench_server: wrk is not installed, skipping (Debian: apt-get install -y wrk nginx)")
        return 0
    if not can_pin():
        print("bench_server: taskset or a second CPU is missing: server and wrk share CPUs")
    with contextlib.ExitStack() as stack:
        workdir = scratch_directory(stack, args.dir)
        # The servers run from compiled bytecode, as after `pip install` (which compiles at
        # install time): a process that compiles every module it imports keeps the compiler's
        # garbage as memory, which would count against the server.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(workdir / "bytecode")
        store = (
            workdir / "store"
            if args.store_dir is None
            else scratch_directory(stack, args.store_dir)
        )
        if args.compare_servers:
            table = compare_servers(args, workdir)
        elif args.scrape_only:
            table = bench_scrape(args, workdir, store)
        elif args.list_watch_only:
            table = bench_list_watch(args, workdir, store)
        else:
            table = bench(args, workdir, store)
    table.print()
    if args.json:
        table.write_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
