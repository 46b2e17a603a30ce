"""MQTT notifications benchmark: latency to a subscriber, the PUT throughput they cost, RSS.

Real parts: Debian's Mosquitto, ``iot-config serve`` processes on one local store, wrk.

- Latency, PUT acknowledged -> compat message received by a subscriber, p50/p99:
  for the publishing server's own writes (announced at once) and for writes by another server
  process on the same store (found by the publisher's poll, ``--poll`` seconds, so about half
  the interval on average). Two publishers run on that store, and the duplicates they send
  (the same change announced by both) are counted.
- The cost of MQTT to the PUTs, three servers measured in the same rounds (12 by default, in a
  shuffled order each, 2 s of PUTs and 1 s of device GETs per server and round): MQTT off; MQTT
  on with the publisher process on CPU 1 (what the design is for: publishing never on the
  request-serving core); MQTT on with the publisher sharing CPU 0 with the worker (a replica
  limited to one core). The server's worker runs on CPU 0, wrk and the broker on CPU 1. Every
  PUT is a change to announce (1,000 devices written round-robin), the worst case. Reported per
  round as on/off ratios, summarised by their median, quartiles and range, so the spread says
  what the machine can resolve: req/s (wrk's rate, and charged with the time the publisher
  still needed for its backlog after wrk stopped), and the worker's CPU seconds per PUT from
  /proc (supervisor + worker), which other jobs on the machine disturb far less than req/s.
  The target: less than 5 % lower PUT throughput.
- RSS and PSS (from /proc/PID/smaps_rollup: shared pages divided among their users) of the
  servers after the load, and of the publisher process alone.

Run: ``python tests/benchmarks/bench_mqtt.py [--quick] [--json PATH] [--poll SECONDS] [--rounds N]
[--dir DIR]`` (``--dir /dev/shm``: the stores on tmpfs, so PUTs are CPU-bound, not fsync-bound:
a stricter test, with less spread between rounds than a disk's flush times leave).
Needs ``mosquitto`` (``apt-get install -y mosquitto``) and, for throughput, ``wrk``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness
import bench_server as server
import support  # tests/ is on the path: bench_server put it there
from mqtt_broker import PASSWORD, SBIN, USER, Mosquitto, Subscriber

from iot_config_server.notifications import COMPAT_TOPIC
from iot_config_server.publisher import PUBLISHER_NAME

PREFIX = "bench/devices"


def put(port: int, mac: str, n: int) -> str:
    """One PUT; returns the ETag."""
    # The MAC in the content: equal content would have an equal ETag on another device.
    body = json.dumps({"content": {"deviceName": "bench", "mac": mac, "n": n}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {server.TOKEN}"}
        conn.request("PUT", f"/api/configs/{mac}", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"PUT {mac}: {response.status}")
        return str(response.getheader("ETag")).strip('"')
    finally:
        conn.close()


class Arrivals(Subscriber):
    """A subscriber noting when each compat announcement arrived, by ETag."""

    def __init__(self, broker: Mosquitto) -> None:
        self.arrived: dict[str, list[float]] = {}
        self.event = threading.Condition()
        super().__init__(broker, COMPAT_TOPIC)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        now = time.perf_counter()
        etag = json.loads(message.payload)["etag"]
        with self.event:
            self.arrived.setdefault(etag, []).append(now)
            self.event.notify_all()

    def wait(self, etag: str, timeout: float = 60.0) -> float:
        with self.event:
            if not self.event.wait_for(lambda: etag in self.arrived, timeout):
                raise RuntimeError(f"no announcement of {etag} within {timeout} s")
            return self.arrived[etag][0]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def mqtt_server(
    name: str, port: int, store: Path, workdir: Path, broker: Mosquitto | None, poll: float
) -> server.Proc:
    argv = [support.PYTHON, "-m", "iot_config_server.cli", "serve", "--store", str(store)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--threads", "8"]
    argv += ["--log-level", "WARNING"]
    extra = {"IOT_CONFIG_ADMIN_TOKENS": server.TOKEN}
    if broker is not None:
        extra |= {
            "MQTT_URL": broker.url,
            "MQTT_USERNAME": USER,
            "MQTT_PASSWORD": PASSWORD,
            "IOT_CONFIG_MQTT_TOPIC_PREFIX": PREFIX,
            "IOT_CONFIG_MQTT_POLL_SECONDS": str(poll),
        }
    return server.Proc(name, argv, port, workdir, env=server.child_env(**extra))


def latency(
    report: _harness.Report, broker: Mosquitto, workdir: Path, samples: int, poll: float
) -> None:
    store = workdir / "latency-store"
    store.mkdir()
    ports = [support.free_port() for _ in range(3)]
    publisher = mqtt_server("publisher", ports[0], store, workdir, broker, poll)
    second = mqtt_server("second publisher", ports[1], store, workdir, broker, poll)
    plain = mqtt_server("plain", ports[2], store, workdir, None, poll)
    arrivals = Arrivals(broker)
    rng = random.Random(13)
    try:
        with (
            server.running(publisher, "/api/health/live"),
            server.running(second, "/api/health/live"),
            server.running(plain, "/api/health/live"),
        ):
            time.sleep(2 * poll)  # both publishers connected and synced (not measured)
            own: list[float] = []
            for n in range(samples):
                etag = put(publisher.port, f"cc-00-00-00-00-{n % 200:02x}", n)
                acked = time.perf_counter()
                own.append(arrivals.wait(etag) - acked)
            other: list[float] = []
            other_etags = []
            for n in range(max(8, samples // 10)):
                time.sleep(rng.uniform(0, poll))  # not in step with the polls
                etag = put(plain.port, f"cd-00-00-00-00-{n % 200:02x}", n)
                acked = time.perf_counter()
                other.append(arrivals.wait(etag, timeout=poll * 10 + 30) - acked)
                other_etags.append(etag)
            time.sleep(2 * poll)  # let late duplicates arrive before counting them
    finally:
        arrivals.close()
    for name, values, how in (
        ("own write", own, "announced at once by the writing server"),
        ("other process", other, f"via a server without MQTT, found by a poll every {poll:g} s"),
    ):
        early = sum(value < 0 for value in values)
        note = f"{len(values)} PUTs {how}; {early} arrived before the HTTP answer (counted as 0)"
        clamped = [max(0.0, value) for value in values]
        report.add_value(f"{name} p50", percentile(clamped, 0.5), "s", note=note)
        report.add_value(f"{name} p99", percentile(clamped, 0.99), "s")
    with arrivals.event:
        announced = [len(arrivals.arrived.get(etag, [])) for etag in other_etags]
    duplicates = sum(count - 1 for count in announced)
    report.add_value(
        "duplicate announcements",
        duplicates,
        "",
        note=f"of {len(other_etags)} other-process changes, with two publishers on the store",
    )


def pending(port: int) -> float:
    _status, body = server.http_get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("iot_config_mqtt_pending_announcements "):
            return float(line.split()[1])
    return 0.0  # MQTT off


def charged_with_backlog(port: int, load: server.Load) -> server.Load:
    """``load`` with the time its announcements still took after wrk stopped added to it.

    The publisher may lag behind a PUT load and publish its (coalesced) backlog afterwards:
    that work belongs to the PUTs, not to whatever is measured next.
    """
    started = time.perf_counter()
    while pending(port) > 0:
        time.sleep(0.01)
    drained = time.perf_counter() - started
    duration = load.requests / load.rps
    return dataclasses.replace(load, rps=load.requests / (duration + drained))


def publisher_pids(proc: server.Proc) -> list[int]:
    """The server's MQTT publisher process (forked by its keeper, which is not counted)."""
    found = []
    for pid in server.process_tree(proc.proc.pid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name == PUBLISHER_NAME:
            found.append(pid)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes ``pids`` (all their threads) used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def serving_pids(proc: server.Proc) -> list[int]:
    """The supervisor and its workers: every process of the server but the publisher's."""
    publisher = set(publisher_pids(proc))
    return [pid for pid in server.process_tree(proc.proc.pid) if pid not in publisher]


def memory(pids: list[int]) -> tuple[float, float]:
    """(RSS, PSS) of the processes ``pids`` in MiB; PSS shares each shared page among its users."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    kib = int(rest.split()[0])
                    rss, pss = (rss + kib, pss) if key == "Rss" else (rss, pss + kib)
    return rss / 1024, pss / 1024


def connected(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while b"iot_config_mqtt_connected 1.0" not in server.http_get(port, "/metrics")[1]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the publisher of :{port} did not connect within {timeout} s")
        time.sleep(0.1)


def pin_all_threads(pid: int, cpu: int) -> None:
    """Move every thread of ``pid`` to ``cpu`` (``taskset -p`` alone moves only the first)."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True,
                   capture_output=True)  # fmt: skip


def spread(values: list[float]) -> str:
    """Median, quartiles and range of ``values``, as text."""
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    low, high = min(values), max(values)
    return f"median {median:.3f}, quartiles {q1:.3f}-{q3:.3f}, range {low:.3f}-{high:.3f}"


#: A device the PUT load writes early (its first request, bb-00-00-00-00-01, is not sent).
DEVICE = "/esp32/config/bb-00-00-00-00-02.json"
OFF, ON, ONE_CORE = "mqtt off", "mqtt on", "mqtt on, publisher on the worker's core"


@dataclasses.dataclass
class Round:
    """One subject's share of one round."""

    put: server.Load  # wrk's own figure
    charged: server.Load  # with the time the publisher still needed for its backlog
    get: server.Load
    serving_cpu: float  # CPU seconds per PUT of the supervisor and the worker
    publisher_cpu: float  # the same for the publisher process, backlog included


def measure(proc: server.Proc, seconds: float, workdir: Path) -> Round:
    lua = server.PUT_LUA % {"token": server.TOKEN}
    serving, publisher = serving_pids(proc), publisher_pids(proc)
    before = cpu_seconds(serving), cpu_seconds(publisher)
    load = server.run_wrk(proc.port, "/", seconds, 16, workdir, lua=lua)
    # Before the wait for the backlog, whose /metrics polls the worker answers.
    serving_cpu = (cpu_seconds(serving) - before[0]) / load.requests
    charged = charged_with_backlog(proc.port, load)
    publisher_cpu = (cpu_seconds(publisher) - before[1]) / load.requests
    get = server.run_wrk(proc.port, DEVICE, 1.0, 50, workdir)
    return Round(load, charged, get, serving_cpu, publisher_cpu)


def verdict(what: str, ratios: list[float], target: float = 5.0) -> str:
    """One summary line: is the cost ``1 - ratio`` under ``target`` %, beyond the rounds' spread?"""
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    low, cost, high = (100 * (1 - ratio) for ratio in (q3, median, q1))
    if high < target:
        outcome = f"under {target:g} % (met)"
    elif low > target:
        outcome = f"over {target:g} % (NOT met)"
    else:
        outcome = f"not resolved: the rounds' middle half spans {target:g} %"
    return (
        f"{what}: {cost:+.1f} % (middle half of the rounds {low:+.1f} to {high:+.1f} %): {outcome}"
    )


def per_round(runs: list[Round], off: list[Round], value: Callable[[Round], float]) -> list[float]:
    """Each round's on/off ratio of ``value``: runs measured together share the machine's load."""
    return [value(on) / value(base) for on, base in zip(runs, off, strict=True)]


def throughput(
    report: _harness.Report, broker: Mosquitto, workdir: Path, rounds: int, seconds: float
) -> list[str]:
    """Measure the cost of MQTT to PUTs and device GETs; returns the summary's lines."""
    if shutil.which("wrk") is None:
        print("bench_mqtt: wrk is not installed, skipping throughput (apt-get install -y wrk)")
        return []
    subjects = {}
    for name, with_broker in ((OFF, None), (ON, broker), (ONE_CORE, broker)):
        store = workdir / name.replace(" ", "-").replace(",", "").replace("'", "")
        store.mkdir()
        subjects[name] = mqtt_server(name, support.free_port(), store, workdir, with_broker, 5.0)
    results: dict[str, list[Round]] = {name: [] for name in subjects}
    rng = random.Random(5)
    with contextlib.ExitStack() as stack:
        for proc in subjects.values():
            stack.enter_context(server.running(proc, "/api/health/live"))
        for name in (ON, ONE_CORE):
            connected(subjects[name].port)
        if server.can_pin():  # the design's point: the publisher off the request-serving core
            for pid in publisher_pids(subjects[ON]):
                pin_all_threads(pid, 1)
        lua = server.PUT_LUA % {"token": server.TOKEN}
        for proc in subjects.values():  # warm-up: the MACs of the load written
            server.run_wrk(proc.port, "/", 2, 16, workdir, lua=lua)
            status, body = server.http_get(proc.port, DEVICE)
            if status != 200:
                raise RuntimeError(f"GET {DEVICE} on {proc.name}: {status} {body[:200]!r}")
        for index in range(rounds):
            order = list(subjects)
            rng.shuffle(order)  # no subject always runs first, or right after another
            for name in order:
                results[name].append(measure(subjects[name], seconds, workdir))
            print(f"bench_mqtt: round {index + 1}/{rounds} done", flush=True)
        sizes = {
            name: (memory(server.process_tree(proc.proc.pid)), memory(publisher_pids(proc)))
            for name, proc in subjects.items()
        }
    off = results[OFF]
    errors = sum(r.put.errors + r.get.errors for runs in results.values() for r in runs)
    report.add_value(
        "PUT req/s, mqtt off",
        statistics.median(r.put.rps for r in off),
        "req/s",
        note=f"median of {rounds} rounds of {seconds:g} s; {errors} errors in all",
    )
    cpu_off = statistics.median(r.serving_cpu for r in off)
    report.add_value("worker CPU per PUT, mqtt off", cpu_off, "s", note="supervisor + worker")
    summary = []
    for name in (ON, ONE_CORE):
        runs = results[name]
        ratios = per_round(runs, off, lambda r: r.put.rps)
        cpu = per_round(runs, off, lambda r: r.serving_cpu)
        charged = per_round(runs, off, lambda r: r.charged.rps)
        gets = per_round(runs, off, lambda r: r.get.rps)
        for label, values, note, target in (
            ("PUT cost", ratios, "1 - median on/off req/s per round", 5.0),
            ("PUT cost with backlog", charged, "the backlog left when wrk stopped charged", None),
            ("device GET cost", gets, "50 connections, 1 s a round", 5.0),
        ):
            report.add_value(
                f"{label}, {name}",
                100 * (1 - statistics.median(values)),
                "%",
                target=target,
                note=f"{note}; ratios {spread(values)}",
            )
        report.add_value(
            f"worker CPU per PUT added, {name}",
            100 * (statistics.median(cpu) - 1),
            "%",
            target=5.0,
            note=f"supervisor + worker, on/off per round: {spread(cpu)}",
        )
        report.add_value(
            f"publisher CPU per PUT, {name}",
            statistics.median(r.publisher_cpu for r in runs),
            "s",
            note="its own process, during the load and its backlog",
        )
        where = "publisher on its own core" if name == ON else "publisher on the worker's core"
        summary.append(verdict(f"PUT req/s cost, {where}", ratios))
        summary.append(verdict(f"worker CPU per PUT added, {where}", [2 - x for x in cpu]))
    (rss_off, pss_off), _ = sizes[OFF]
    (rss_on, pss_on), (rss_pub, pss_pub) = sizes[ON]
    report.add_value("RSS / PSS, mqtt off", rss_off, "MiB", note=f"PSS {pss_off:.1f} MiB")
    report.add_value(
        "RSS added by mqtt",
        rss_on - rss_off,
        "MiB",
        note=f"PSS {pss_on - pss_off:+.1f} MiB; the publisher process: RSS {rss_pub:.1f}, "
        f"PSS {pss_pub:.1f} MiB",
    )
    summary.append(
        f"memory added: RSS {rss_on - rss_off:+.1f} MiB, PSS {pss_on - pss_off:+.1f} MiB "
        f"(the publisher process: RSS {rss_pub:.1f}, PSS {pss_pub:.1f} MiB)"
    )
    return summary


def main() -> int:
    parser = _harness.common_arguments(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--poll", type=float, default=1.0, help="publishers' poll interval")
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="throughput rounds (default 12, 3 with --quick): more narrow the spread of the median",
    )
    args = parser.parse_args()
    if shutil.which("mosquitto", path=SBIN) is None:
        print("bench_mqtt: mosquitto is not installed, skipping (apt-get install -y mosquitto)")
        return 0
    samples, rounds, seconds = (40, 3, 2.0) if args.quick else (300, 12, 2.0)
    rounds = args.rounds or rounds
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    report = _harness.Report(
        "mqtt notifications",
        {"samples": samples, "rounds": rounds, "seconds": seconds, "poll": args.poll},
    )
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-", dir=args.dir) as scratch:
        workdir = Path(scratch)
        broker = Mosquitto(workdir / "mosquitto")
        try:
            if server.can_pin():  # the broker stands for another machine: off the server's CPU
                pin_all_threads(broker.pid, 1)
            latency(report, broker, workdir, samples, args.poll)
            summary = throughput(report, broker, workdir, rounds, seconds)
        finally:
            broker.stop()
    report.print()
    after = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nsummary ({rounds} rounds; the target is a cost under 5 %):")
    for line in summary:
        print(f"  {line}")
    print(f"  load average (1, 5, 15 min) before: {load}; after: {after}; {os.cpu_count()} CPUs")
    if args.json:
        report.write_json(args.json)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
