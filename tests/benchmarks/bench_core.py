"""Benchmarks of `iot_config_core` against the physical floor, measured in the same run.

Each operation is compared with the bare OS/stdlib work it cannot avoid (open+read+json.loads for a
read, write+fsync+rename for a write, scandir+stat for a listing), on the same files, interleaved.
The targets are ratios to that floor, so the numbers mean the same on a laptop and in CI. The
change feed's poll (``feed``) is compared with the listing-based feed it replaced instead. Nothing
here asserts: run it, read the table.

    python3 tests/benchmarks/bench_core.py          # 10,000 configs (100,000 for memory)
    python3 tests/benchmarks/bench_core.py --quick  # small sizes, a few seconds
    python3 tests/benchmarks/bench_core.py --only get put --json results.json
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import Report, Timing, common_arguments, measure

if importlib.util.find_spec("iot_config_core") is None:
    # Run from a checkout without installing: make the repository root importable.
    sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from iot_config_core import Change, ChangeFeed, ConfigStore, MacAddress, encode_document, open_store
from iot_config_core.wire import summaries_to_wire

BENCHMARKS = ("get", "get_raw", "put", "list_warm", "list_cold", "wire", "feed", "memory")

# Sizes from the issue, and small ones for --quick.
FULL = {
    "docs": 200,
    "rounds": 60,
    "puts": 400,
    "fleet": 10_000,
    "list_rounds": 15,
    "cold_rounds": 9,
    "feed_fleet": 1_000,
    "feed_rounds": 15,
    "memory_fleet": 100_000,
}
QUICK = {
    "docs": 50,
    "rounds": 15,
    "puts": 20,
    "fleet": 1_000,
    "list_rounds": 5,
    "cold_rounds": 3,
    "feed_fleet": 1_000,
    "feed_rounds": 5,
    "memory_fleet": 5_000,
}


def mac_of(index: int) -> MacAddress:
    """Distinct, well-spread MACs under an Espressif-looking OUI."""
    return MacAddress((0x24_0A_C4 << 24) | ((index * 2_654_435_761) & 0xFF_FFFF))


def typical_config(index: int, variant: int = 0) -> dict[str, Any]:
    """A config shaped like the real ESP32 ones: ~30 keys, nested objects and arrays."""
    rng = random.Random(index * 7919 + variant)
    room = rng.choice(["kitchen", "hall", "garage", "office", "bedroom", "cellar", "attic"])
    return {
        "deviceName": f"{room}-sensor-{index}",
        "deviceEntityId": f"sensor.{room}_{index}",
        "enableOTA": rng.random() < 0.5,
        "otaUrl": f"https://ota.example.net/firmware/esp32-{rng.randint(1, 9)}.bin",
        "firmwareChannel": rng.choice(["stable", "beta"]),
        "timezone": "Europe/Berlin",
        "logLevel": rng.choice(["info", "debug", "warn"]),
        "pollIntervalSeconds": rng.choice([60, 300, 900]),
        "sleepMode": rng.choice(["none", "light", "deep"]),
        "wifi": {
            "ssid": f"iot-{room}",
            "password": f"{rng.getrandbits(64):016x}",
            "channel": rng.randint(1, 13),
            "hidden": False,
            "staticIp": None if rng.random() < 0.7 else f"10.0.{rng.randint(0, 255)}.{index % 250}",
        },
        "mqtt": {
            "host": "mqtt.example.net",
            "port": 8883,
            "tls": True,
            "username": f"dev{index}",
            "topicPrefix": f"home/{room}/{index}",
            "keepAlive": 60,
            "qos": 1,
        },
        "sensors": [
            {"type": "bme280", "address": 118, "intervalSeconds": 30, "offsets": [0.0, -0.4, 1.5]},
            {"type": "pir", "pin": 27, "debounceMs": 250, "invert": False},
            {"type": "lux", "pin": 34, "gain": rng.choice([1, 2, 4, 8]), "calibration": 1.037},
        ],
        "leds": {"pin": 2, "count": rng.randint(1, 60), "brightness": rng.random()},
        "buttons": [{"pin": 0, "longPressMs": 1500}, {"pin": 35, "longPressMs": 800}],
        "i2c": {"sda": 21, "scl": 22, "frequency": 400_000},
        "ntpServers": ["0.pool.ntp.org", "1.pool.ntp.org"],
        "location": {"building": "HQ", "floor": rng.randint(0, 4), "room": room},
        "tags": rng.sample(["battery", "mains", "outdoor", "indoor", "critical", "lab"], 3),
        "reportBattery": rng.random() < 0.5,
        "temperatureUnit": "C",
        "displayEnabled": False,
        "watchdogSeconds": 30,
        "maxRetries": 5,
        "retryBackoffMs": 2000,
        "bootDelayMs": 0,
        "hostname": f"esp32-{index:05d}",
        "notes": "Installed by facilities; do not move without telling the IoT team.",
    }


def populate(root: Path, count: int) -> list[MacAddress]:
    """Write ``count`` configs as the store would store them (no fsync: this is setup)."""
    root.mkdir(parents=True, exist_ok=True)
    macs = [mac_of(i) for i in range(count)]
    for i, mac in enumerate(macs):
        (root / mac.file_name).write_bytes(encode_document(typical_config(i)))
    return macs


def read_and_decode(paths: list[Path]) -> Callable[[], None]:
    """The floor of a read: open, read, json.loads, nothing else."""

    def floor() -> None:
        for path in paths:
            with open(path, "rb") as f:
                json.loads(f.read())

    return floor


def bench_get(report: Report, scratch: Path, sizes: dict[str, int]) -> None:
    root = scratch / "get"
    macs = populate(root, sizes["docs"])
    names = [str(mac) for mac in macs]  # what a server hands over: the MAC from the URL
    paths = [root / mac.file_name for mac in macs]
    store = open_store(str(root))

    def get() -> None:
        for name in names:
            store.get(name)

    def get_raw() -> None:
        for name in names:
            store.get_raw(name)

    floor = read_and_decode(paths)
    timings = measure(
        {"open+read+json.loads": floor, "get": get, "get_raw": get_raw},
        repeat=sizes["rounds"],
        per_call=len(names),
        warmup=2,
    )
    size = sum(p.stat().st_size for p in paths) // len(paths)
    if sizes["want_get"]:
        report.add(
            "get",
            timings["get"],
            baseline=timings["open+read+json.loads"],
            target=1.5,
            note=f"{len(names)} documents of ~{size} bytes, MAC given as a string",
        )
    if sizes["want_get_raw"]:
        report.add(
            "get_raw (warm)",
            timings["get_raw"],
            baseline=timings["open+read+json.loads"],
            target=1.0,
            note="stat + cache hit; should be well under the floor",
        )


def bench_put(report: Report, scratch: Path, sizes: dict[str, int]) -> None:
    root = scratch / "put"
    root.mkdir()
    store = open_store(str(root))
    mac = mac_of(1)
    contents = [typical_config(1, 0), typical_config(1, 1)]
    payloads = [encode_document(c) for c in contents]
    target = str(root / "floor.json")
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    turn = {"put": 0, "floor": 0, "floor_dir": 0}

    def put() -> None:
        turn["put"] ^= 1  # alternate contents so every put really writes
        store.put(mac, contents[turn["put"]])

    def bare_write(*, sync_dir: bool, key: str) -> Callable[[], None]:
        def floor() -> None:
            turn[key] ^= 1
            temp = f"{target}.{key}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            os.write(fd, payloads[turn[key]])
            os.fsync(fd)
            os.close(fd)
            os.replace(temp, target)
            if sync_dir:
                os.fsync(dir_fd)

        return floor

    try:
        timings = measure(
            {
                "write+fsync+rename": bare_write(sync_dir=False, key="floor"),
                "…+fsync(dir)": bare_write(sync_dir=True, key="floor_dir"),
                "put": put,
            },
            repeat=sizes["puts"],
            warmup=3,
            max_seconds=60,
        )
    finally:
        os.close(dir_fd)
    report.add(
        "put",
        timings["put"],
        baseline=timings["write+fsync+rename"],
        target=1.3,
        note=f"{len(payloads[0])} bytes, no precondition; local disk ({root})",
    )
    report.add(
        "put vs floor incl. dir fsync",
        timings["put"],
        baseline=timings["…+fsync(dir)"],
        note="the store also fsyncs the directory so the rename itself is durable",
    )


def bench_list(report: Report, scratch: Path, sizes: dict[str, int]) -> list[Any]:
    root = scratch / "fleet"
    count = sizes["fleet"]
    t0 = time.perf_counter()
    populate(root, count)
    print(f"  wrote {count} configs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    store = open_store(str(root))
    store.list()

    def scandir_stat() -> None:
        with os.scandir(root) as it:
            for entry in it:
                entry.stat()

    if sizes["want_list_warm"]:
        timings = measure(
            {"scandir+stat": scandir_stat, "list": store.list},
            repeat=sizes["list_rounds"],
            warmup=2,
        )
        report.add(
            f"list warm ({count})",
            timings["list"],
            baseline=timings["scandir+stat"],
            target=3.0,
            note="store.list() on an unchanged directory: one scandir+stat, no reads",
        )

    fresh: dict[str, ConfigStore] = {}

    def new_store() -> None:
        fresh["store"] = open_store(str(root))

    def cold_list() -> None:
        fresh["store"].list()

    names = sorted(os.listdir(root))
    paths = [root / name for name in names]
    if sizes["want_list_cold"]:
        timings = measure(
            {"read+json.loads all": read_and_decode(paths), "list": cold_list},
            repeat=sizes["cold_rounds"],
            warmup=1,
            setup=new_store,
        )
        report.add(
            f"list cold ({count})",
            timings["list"],
            baseline=timings["read+json.loads all"],
            target=1.5,
            note="store.list() on a new store: reads, validates and summarises every file",
        )
    return store.list()


def bench_wire(report: Report, summaries: list[Any], sizes: dict[str, int]) -> None:
    plain = summaries_to_wire(summaries)  # the floor serialises the very same dicts

    def wire() -> None:
        json.dumps(summaries_to_wire(summaries))

    def dumps_only() -> None:
        json.dumps(plain)

    timings = measure(
        {"json.dumps(prebuilt)": dumps_only, "wire": wire}, repeat=sizes["list_rounds"], warmup=2
    )
    report.add(
        f"summaries_to_wire+dumps ({len(summaries)})",
        timings["wire"],
        baseline=timings["json.dumps(prebuilt)"],
        note="the server's GET /api/configs body; no target, time reported",
    )


class ListingFeed:
    """The change feed as it was before `ConfigStore.etags`: a diff of whole listings.

    Kept here as the baseline of the feed benchmark: each changed file is read, parsed and
    summarised by `ConfigStore.listing`, and every poll that finds a change diffs the fleet.
    """

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self.known: dict[MacAddress, str] = {}
        self.generation: int | None = None

    def poll(self) -> list[Change]:
        listing = self.store.listing()
        if listing.generation == self.generation:
            return []
        known = self.known
        current = {summary.mac_address: summary.etag for summary in listing.summaries}
        changes = [Change(mac, etag) for mac, etag in current.items() if known.get(mac) != etag]
        damaged = {MacAddress.from_file_name(name) for name in listing.skipped}
        for mac in sorted(known.keys() - current.keys()):
            if mac in damaged:
                current[mac] = known[mac]
            else:
                changes.append(Change(mac, None))
        self.known = current
        self.generation = listing.generation
        return sorted(changes, key=lambda change: change.mac_address)


def announce_and_poll(feed: ChangeFeed | ListingFeed, chosen: list[MacAddress]) -> object:
    """What a publisher does for its own writes: read each one's ETag, then poll."""
    for mac in chosen:
        etag = feed.store.etag(mac)
        if isinstance(feed, ChangeFeed):
            assert etag is not None
            feed.vouch(mac, etag)
    return feed.poll()


def bench_feed(report: Report, scratch: Path, sizes: dict[str, int]) -> None:
    """`ChangeFeed.poll` after N of the fleet's files changed, against the listing-based feed.

    Two cases, each timed on its own store objects over the same changes: writes by another
    process (the poll reads each changed file), and a publisher's own writes, where each
    changed version is first read with `ConfigStore.etag` for its announcement (timed too) and
    vouched for. Changes are atomic replaces without fsync (setup, untimed).
    """
    root = scratch / "feed"
    count = sizes["feed_fleet"]
    macs = populate(root, count)
    index = {mac: number for number, mac in enumerate(macs)}
    rng = random.Random(13)
    variant = 0

    def change(chosen: list[MacAddress]) -> None:
        nonlocal variant
        variant += 1
        for mac in chosen:
            path = root / mac.file_name
            temp = root / f".{mac.file_name}.tmp"
            temp.write_bytes(encode_document(typical_config(index[mac], variant)))
            os.replace(temp, path)

    for changed in (1, 10, 100, count):
        old, new = ListingFeed(open_store(str(root))), ChangeFeed(open_store(str(root)))
        old_own, new_own = ListingFeed(open_store(str(root))), ChangeFeed(open_store(str(root)))
        for feed in (old, new, old_own, new_own):
            feed.poll()

        samples: dict[str, list[float]] = {"old": [], "new": [], "old own": [], "new own": []}
        for _ in range(sizes["feed_rounds"]):
            chosen = rng.sample(macs, changed)
            change(chosen)
            subjects: dict[str, Callable[[], object]] = {
                "old": old.poll,
                "new": new.poll,
                "old own": functools.partial(announce_and_poll, old_own, chosen),
                "new own": functools.partial(announce_and_poll, new_own, chosen),
            }
            for name in rng.sample(list(subjects), len(subjects)):  # in a shuffled order
                gc.collect()
                gc.disable()
                started = time.perf_counter()
                found = subjects[name]()
                elapsed = time.perf_counter() - started
                gc.enable()
                assert isinstance(found, list)
                assert len(found) == changed, (name, len(found))
                samples[name].append(elapsed)
        timings = {name: Timing(name, tuple(values)) for name, values in samples.items()}
        for case, subject, note in (
            ("changed by another process", "", "ChangeFeed.poll vs the listing-based feed"),
            ("own writes announced", " own", "etag() per write, vouched, + poll; the same before"),
        ):
            report.add(
                f"feed poll, {changed} of {count} {case}",
                timings[f"new{subject}"],
                baseline=timings[f"old{subject}"],
                target=1.0,
                note=note,
            )


_MEMORY_CHILD = """
import gc, json, sys, tracemalloc
from iot_config_core import open_store

def rss():def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * {page}

root, mode = sys.argv[1], sys.argv[2]
gc.collect()
if mode == "tracemalloc":
    tracemalloc.start()
before = rss()
store = open_store(root)
listing = store.listing()
gc.collect()
result = {{"count": len(listing.summaries), "rss": rss() - before}}
if mode == "tracemalloc":
    result["current"], result["peak"] = tracemalloc.get_traced_memory()
print(json.dumps(result))
"""


def bench_memory(report: Report, scratch: Path, sizes: dict[str, int]) -> None:
    root = scratch / "memory-fleet"
    count = sizes["memory_fleet"]
    t0 = time.perf_counter()
    populate(root, count)
    print(f"  wrote {count} configs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    code = _MEMORY_CHILD.format(page=os.sysconf("SC_PAGE_SIZE"))
    results = {}
    for mode in ("tracemalloc", "rss"):
        done = subprocess.run(
            [sys.executable, "-c", code, str(root), mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=240,
        )
        results[mode] = json.loads(done.stdout)
    traced = results["tracemalloc"]
    scale = 100_000 / traced["count"]
    mb = 1024 * 1024
    report.add_value(
        f"memory: cached listing ({traced['count']}), tracemalloc",
        traced["current"] / mb,
        "MB",
        target=100 * traced["count"] / 100_000,
        note=f"Python allocations the store retains; {traced['current'] / traced['count']:.0f} "
        f"bytes/config, {traced['current'] * scale / mb:.0f} MB per 100,000",
    )
    report.add_value(
        "memory: peak during cold listing",
        traced["peak"] / mb,
        "MB",
        note="tracemalloc peak, includes the scan and one decoded document at a time",
    )
    report.add_value(
        "memory: RSS delta of a child process",
        results["rss"]["rss"] / mb,
        "MB",
        note="whole-process growth without tracemalloc (allocator slack included)",
    )


def main() -> None:
    parser = common_arguments(__doc__.splitlines()[0] if __doc__ else "core benchmarks")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"any of {BENCHMARKS}"
    )
    args = parser.parse_args()
    chosen = set(args.only or BENCHMARKS)
    sizes: dict[str, int] = dict(QUICK if args.quick else FULL)
    sizes.update({f"want_{name}": name in chosen for name in BENCHMARKS})
    report = Report(
        "iot_config_core",
        {"quick": args.quick, "fleet": sizes["fleet"], "memory_fleet": sizes["memory_fleet"]},
    )
    scratch = Path(tempfile.mkdtemp(prefix="iot-config-bench-", dir=args.dir))
    started = time.perf_counter()
    try:
        if chosen & {"get", "get_raw"}:
            bench_get(report, scratch, sizes)
        if "put" in chosen:
            bench_put(report, scratch, sizes)
        if chosen & {"list_warm", "list_cold", "wire"}:
            summaries = bench_list(report, scratch, sizes)
            if "wire" in chosen:
                bench_wire(report, summaries, sizes)
        if "feed" in chosen:
            bench_feed(report, scratch, sizes)
        if "memory" in chosen:
            bench_memory(report, scratch, sizes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.parameters["seconds"] = round(time.perf_counter() - started, 1)
    report.print()
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
