"""What each storage backend costs: the store against its backend's own floor, and against disk.

For every backend available here (local disk; CephFS through ceph-fuse when a mount is given; S3
through s3fs against a real moto server and, when installed, a real SeaweedFS server) it times, on
a fleet of 1,000 configs:

- ``get`` and ``put`` through `ConfigStore`, against the *raw floor* of that backend: a bare read
  or write of the same bytes through the same mount or the same s3fs client (open/read, or
  write+fsync+rename; one GET, or one PUT). The store should add <= 1.3x to it for get and put
  (``put`` with the history off: what the history adds is timed on its own, below);
- ``get_raw`` (the device endpoint's path: a stat or HEAD, then a cache hit);
- ``list`` warm (nothing changed: one scan or LIST) and cold (a fresh store: scan + read every
  document), against a bare scan / LIST (+ reading every object) through the same client;

and then every store operation as a ratio to the same operation on local disk in the same run,
and what the version history costs (`run_history`): ``put`` with history on against off on the
same backend (target <= 1.5x on local disk and CephFS, <= 1.2x on S3) by one writer, for a device
it wrote last (the usual case) and for a first write (read and list first), with the histories
full so pruning runs at its long-run rate; on S3 the requests per put; the listing before and
after every config got history, and the bytes each recorded version takes. The loopback S3
servers have no network round trip, so they are CPU-bound: ``--s3-delay MS`` adds one per request.
Nothing asserts: run it, read the tables.

    python3 tests/benchmarks/bench_storage.py                       # local, moto, SeaweedFS
    python3 tests/benchmarks/bench_storage.py --cephfs /mnt/cephfs  # ... and CephFS
    python3 tests/benchmarks/bench_storage.py --quick               # 200 configs, a smoke run
    python3 tests/benchmarks/bench_storage.py --quick --s3-delay 10 # ... as if S3 were 10 ms away

With ``--cephfs-second MNT2`` (a second ceph-fuse mount of the same filesystem: another client,
as a second server replica has) it also times how long a write through the first mount takes to
show in a listing, and in a device read, through the second (`cross_client`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import Report, Timing, common_arguments, durable_write, measure
from fsspec.asyn import sync

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests/: the S3 server helpers
if importlib.util.find_spec("iot_config_core") is None:
    # Run from a checkout without installing: make the repository root importable.
    sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from iot_config_core import ConfigStore, MacAddress, encode_document, open_store

FULL = {"fleet": 1000, "batch": 20, "rounds": 25, "put_rounds": 40, "list_rounds": 10, "cold": 3}
QUICK = {"fleet": 200, "batch": 10, "rounds": 5, "put_rounds": 5, "list_rounds": 3, "cold": 2}
GET_PUT_TARGET = 1.3


def mac_of(index: int) -> MacAddress:
    return MacAddress((0x24_0A_C4 << 24) | ((index * 2_654_435_761) & 0xFF_FFFF))


def config(index: int, variant: int = 0) -> dict[str, Any]:
    """A config shaped like the real ones: names, flags, nested objects, a list."""
    rng = random.Random(index * 7919 + variant)
    room = rng.choice(["kitchen", "hall", "garage", "office", "bedroom"])
    return {
        "deviceName": f"{room}-sensor-{index}",
        "deviceEntityId": f"sensor.{room}_{index}",
        "enableOTA": rng.random() < 0.5,
        "variant": variant,
        "otaUrl": f"https://ota.example.net/firmware/esp32-{rng.randint(1, 9)}.bin",
        "pollIntervalSeconds": rng.choice([60, 300, 900]),
        "wifi": {"ssid": f"iot-{room}", "hidden": False, "powerSave": rng.choice(["min", "max"])},
        "mqtt": {"host": "mqtt.example.net", "port": 8883, "topic": f"home/{room}/{index}"},
        "sensors": [
            {"type": t, "pin": rng.randint(0, 39), "intervalSeconds": rng.choice([10, 30, 60])}
            for t in ("temperature", "humidity", "pressure", "co2", "lux")
        ],
        "notes": "x" * rng.randint(100, 300),
    }


@dataclass
class Backend:
    """One place to store configs, with the bare operations of its own client as the floor."""

    name: str
    store: ConfigStore
    reopen: Callable[[], ConfigStore]  # a fresh store on the same root (cold caches)
    floor_read: Callable[[str], bytes]
    floor_write: Callable[[str, bytes], None]  # writes to a scratch area, not the fleet
    floor_list: Callable[[], list[str]]
    disk_root: Path | None = None  # where a POSIX store's files are, to weigh the history
    requests: dict[str, int] | None = None  # S3 requests by operation, counted as they are sent


# -- POSIX (local disk, CephFS) ------------------------------------------------------------------


def posix_backend(name: str, base: Path) -> Backend:
    root = base / "fleet"
    scratch = base / "floor"
    root.mkdir(parents=True)
    scratch.mkdir()

    def floor_read(file_name: str) -> bytes:
        with open(root / file_name, "rb") as f:
            return f.read()

    def floor_write(file_name: str, data: bytes) -> None:
        durable_write(scratch, file_name, data)

    def floor_list() -> list[str]:
        with os.scandir(root) as it:
            return [e.name for e in it if e.is_file() and e.stat().st_size >= 0]

    return Backend(
        name,
        open_store(str(root)),
        lambda: open_store(str(root)),
        floor_read,
        floor_write,
        floor_list,
        root,
    )


# -- S3 ------------------------------------------------------------------------------------------


def s3_backend(name: str, options: dict[str, Any], delay: float = 0.0) -> Backend:
    """The floor is one bare request (GET, PUT, LIST pages) through the store's own s3fs client.

    ``delay`` seconds are waited before each request is sent, as a network round trip would
    (requests sent together wait together); loopback servers have none.
    """
    bucket = "bench"
    prefix = uuid.uuid4().hex
    url = f"s3://{bucket}/{prefix}"
    store = open_store(url, create=True, **options)
    fs = store._backend._fs  # type: ignore[attr-defined]
    requests: dict[str, int] = collections.Counter()
    send = fs._call_s3

    async def counted(method: str, *args: Any, **kwargs: Any) -> Any:
        requests[method] += 1
        if delay:
            await asyncio.sleep(delay)
        return await send(method, *args, **kwargs)

    fs._call_s3 = counted

    async def get(key: str) -> bytes:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            return bytes(await body.read())
        finally:
            body.close()

    def floor_list() -> list[str]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{prefix}/", "Delimiter": "/"}
        names: list[str] = []
        while True:
            page = sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs)
            names += [item["Key"] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return names
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    return Backend(
        name,
        store,
        lambda: open_store(url, **options),
        lambda file_name: sync(fs.loop, get, f"{prefix}/{file_name}"),
        lambda file_name, data: sync(
            fs.loop,
            fs._call_s3,
            "put_object",
            Bucket=bucket,
            Key=f"{prefix}-floor/{file_name}",
            Body=data,
        ),
        floor_list,
        requests=requests,
    )


# -- the measurements ----------------------------------------------------------------------------


def without_history(store: ConfigStore) -> ConfigStore:
    """Another client of the same root that records no history."""
    return ConfigStore(store._backend, limits=store.limits, history_limit=0)


def populate(backend: Backend, count: int) -> list[MacAddress]:
    # Without history, so `run_history` can time the listing before and after history exists.
    store = without_history(backend.store)
    macs = [mac_of(i) for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put(macs[i], config(i)), range(count)))
    return macs


def batches(macs: list[MacAddress], size: int) -> Iterator[list[MacAddress]]:
    """Endless batches walking the fleet, so every call reads different documents."""
    while True:
        for start in range(0, len(macs) - size + 1, size):
            yield macs[start : start + size]


def run_backend(backend: Backend, sizes: dict[str, int]) -> dict[str, Timing]:
    macs = populate(backend, sizes["fleet"])
    batch = sizes["batch"]
    store = backend.store
    timings: dict[str, Timing] = {}

    walk = {k: batches(macs, batch) for k in ("get", "raw", "floor")}
    for mac in macs:
        store.get_raw(mac)  # warm the device cache once
    timings |= measure(
        {
            f"{backend.name} bare read": lambda: [
                backend.floor_read(m.file_name) for m in next(walk["floor"])
            ],
            f"{backend.name} get": lambda: [store.get(m) for m in next(walk["get"])],
            f"{backend.name} get_raw": lambda: [store.get_raw(m) for m in next(walk["raw"])],
        },
        repeat=sizes["rounds"],
        per_call=batch,
    )

    turn = [0, 0]
    put_macs = macs[:batch]
    datas = [encode_document(config(i, 1)) for i in range(batch)]

    # The store's own cost over the floor: history off here, its factor is `run_history`'s.
    plain = without_history(store)

    def put() -> None:
        turn[0] += 1
        for i, mac in enumerate(put_macs):
            plain.put(mac, config(i, 2 + turn[0]))

    def bare_write() -> None:
        turn[1] += 1
        for mac, data in zip(put_macs, datas, strict=True):
            backend.floor_write(mac.file_name, data + b" " * (turn[1] % 2))

    timings |= measure(
        {f"{backend.name} bare write": bare_write, f"{backend.name} put": put},
        repeat=sizes["put_rounds"],
        per_call=batch,
    )

    store.list()
    timings |= measure(
        {
            f"{backend.name} bare list": backend.floor_list,
            f"{backend.name} list warm": store.list,
        },
        repeat=sizes["list_rounds"],
    )

    def bare_cold() -> None:
        for name in backend.floor_list():
            backend.floor_read(name.rsplit("/", 1)[-1])

    timings |= measure(
        {
            f"{backend.name} bare list+read": bare_cold,
            f"{backend.name} list cold": lambda: backend.reopen().list(),
        },
        repeat=sizes["cold"],
        warmup=0,
    )
    assert len(store.list()) == len(macs)
    return timings


HISTORY_TARGETS = {"local": 1.5, "cephfs": 1.5}
S3_HISTORY_TARGET = 1.2


def run_history(backend: Backend, macs: list[MacAddress], sizes: dict[str, int]) -> Report:
    """PUT with history on vs off (disjoint configs, round-robin), listing before and after."""
    name = backend.name
    report = Report(f"storage: history on vs off ({name})", dict(sizes))
    on, off = backend.store, without_history(backend.store)
    batch = sizes["batch"]
    on_macs, off_macs = macs[2 * batch : 3 * batch], macs[3 * batch : 4 * batch]
    turn = [0]

    def put_with(store: ConfigStore, targets: list[MacAddress]) -> Callable[[], None]:
        def put() -> None:
            turn[0] += 1
            for i, mac in enumerate(targets):
                store.put(mac, config(i, 1000 + turn[0]))
            # Pruning runs on a thread: the round pays for its prunes rather than the next one.
            store.wait_for_background()

        return put

    first_macs = macs[4 * batch : 5 * batch]
    # Another store of the same root, forgetting its own writes: every put is a first write
    # (read and list, then record and swap), as after another replica wrote the device.
    first = ConfigStore(on._backend, limits=on.limits, history_limit=on.history_limit)
    forgetful = put_with(first, first_macs)

    def put_first() -> None:
        for mac in first_macs:
            first._history.forget(mac)
        forgetful()

    # Fill the recorded devices' histories to the limit and its slack first, so pruning runs
    # as often during the measurement as it does for every device in the long run.
    for filled in range(on.history_limit + on.history_limit // 4):
        for i, mac in enumerate(on_macs + first_macs):
            on.put(mac, config(i, 2000 + filled))

    puts = measure(
        {
            "put history off": put_with(off, off_macs),
            "put history on": put_with(on, on_macs),
            "put history on, first write": put_first,
        },
        repeat=sizes["put_rounds"],
        per_call=batch,
    )
    target = HISTORY_TARGETS.get(name, S3_HISTORY_TARGET)
    report.add(
        f"{name} put",
        puts["put history on"],
        baseline=puts["put history off"],
        target=target,
        paired=True,
    )
    report.add(
        f"{name} put, first write of a device",
        puts["put history on, first write"],
        baseline=puts["put history off"],
        paired=True,
    )
    if backend.requests is not None:
        for label, store, targets in (
            ("off", off, off_macs),
            ("on", on, on_macs),
            ("on, first write", first, first_macs),
        ):
            per_put = count_requests(backend.requests, store, targets, first=store is first)
            report.add_value(f"{name} requests per put, history {label}", per_put, "")

    def lists(label: str) -> dict[str, Timing]:
        store = backend.reopen()
        store.list()
        warm = measure({label: store.list}, repeat=sizes["list_rounds"])
        cold = measure(
            {f"{label} cold": lambda: backend.reopen().list()}, repeat=sizes["cold"], warmup=0
        )
        return warm | cold

    before = lists("list")
    # One recorded version of every config (two records each: the version before is recorded
    # first, as it was written without history).
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: on.put(macs[i], config(i, 1)), range(len(macs))))
    after = lists("list")
    report.add(f"{name} list warm, all with history", after["list"], baseline=before["list"])
    report.add(
        f"{name} list cold, all with history", after["list cold"], baseline=before["list cold"]
    )
    if backend.disk_root is not None:
        label, present, aside = interleaved_lists(backend, sizes)
        report.add(label, present, baseline=aside)
        records = [p for p in (backend.disk_root / ".history").rglob("*") if p.is_file()]
        logical = sum(p.stat().st_size for p in records) / len(records)
        allocated = sum(p.stat().st_blocks * 512 for p in records) / len(records)
        document = sum(len(encode_document(config(i, 1))) for i in range(len(macs))) / len(macs)
        report.add_value(f"{name} bytes per version", logical, "B", note=f"{len(records)} records")
        report.add_value(f"{name} bytes allocated per version", allocated, "B")
        report.add_value(f"{name} bytes per document", document, "B")
    return report


def count_requests(
    requests: dict[str, int], store: ConfigStore, targets: list[MacAddress], *, first: bool
) -> float:
    """The S3 requests per put, over enough rounds to include the history's pruning."""
    requests.clear()
    rounds = store.history_limit // 4 + 1 if store.history_limit else 2
    for turn in range(rounds):
        for i, mac in enumerate(targets):
            if first:
                store._history.forget(mac)
            store.put(mac, config(i, 5000 + turn))
    store.wait_for_background()  # the pruner's requests count too
    return sum(requests.values()) / (rounds * len(targets))


def interleaved_lists(backend: Backend, sizes: dict[str, int]) -> tuple[str, Timing, Timing]:
    """A cold listing with ``.history`` present and moved aside, alternated (POSIX only).

    Before/after timings drift with the machine's load; renaming the directory away and back
    between rounds compares the same fleet in the same minutes.
    """
    assert backend.disk_root is not None
    history, aside = backend.disk_root / ".history", backend.disk_root.parent / "history-aside"

    def listed(present: bool) -> Callable[[], None]:
        def run() -> None:
            if history.exists() != present:
                (aside if present else history).rename(history if present else aside)
            backend.reopen().list()

        return run

    cold = measure(
        {"with": listed(present=True), "without": listed(present=False)},
        repeat=max(sizes["list_rounds"], 5),
    )
    listed(present=True)()
    return f"{backend.name} list cold, history present", cold["with"], cold["without"]


def cross_client(first: Path, second: Path, sizes: dict[str, int]) -> list[str]:
    """Seconds from a write returning on one CephFS client until another client's store shows it.

    The writer changes one config of a fleet through the first mount; a store on the second
    mount lists (or reads the device document) in a loop until it sees the new ETag. Also counts
    the calls it took: 1 means the first call made after the write saw it.
    """
    base = Path(tempfile.mkdtemp(prefix="bench-cross-", dir=first))
    try:
        writer = open_store(str(base))
        reader = open_store(str(second / base.name))
        macs = [mac_of(i) for i in range(sizes["fleet"])]
        for index, mac in enumerate(macs):
            writer.put(mac, config(index))
        reader.list()  # warm: the reader has summarised every config once

        def listed(mac: MacAddress) -> str | None:
            return next((s.etag for s in reader.list() if s.mac_address == mac), None)

        def read(mac: MacAddress) -> str | None:
            return reader.get_raw(mac).etag

        lines = []
        for what, seen in (("list", listed), ("get_raw", read)):
            delays: list[float] = []
            calls: list[int] = []
            for turn in range(sizes["rounds"]):
                mac = macs[turn % len(macs)]
                etag = writer.put(mac, config(turn, variant=turn + len(what) * 100)).etag
                written = time.perf_counter()
                count = 1
                while seen(mac) != etag:
                    count += 1
                    if time.perf_counter() - written > 60:
                        raise RuntimeError(f"{what}: a write was not seen in 60 s")
                delays.append(time.perf_counter() - written)
                calls.append(count)
            lines.append(
                f"cephfs write on one client, seen by {what} on the other: "
                f"median {statistics.median(delays) * 1000:,.1f} ms, "
                f"max {max(delays) * 1000:,.1f} ms over {len(delays)} writes; "
                f"calls until seen: median {statistics.median(calls):g}, max {max(calls)} "
                f"(fleet of {len(macs):,})"
            )
        return lines
    finally:
        shutil.rmtree(base, ignore_errors=True)


OPS = [
    ("get", "bare read", GET_PUT_TARGET),
    ("get_raw", "bare read", None),
    ("put", "bare write", GET_PUT_TARGET),
    ("list warm", "bare list", None),
    ("list cold", "bare list+read", None),
]


@contextlib.contextmanager
def backends(args: Any, scratch: Path) -> Iterator[list[Backend]]:
    with contextlib.ExitStack() as stack:
        found = [posix_backend("local", scratch / "local")]
        cephfs = args.cephfs or os.environ.get("IOT_CONFIG_TEST_CEPHFS")
        if cephfs:
            base = Path(tempfile.mkdtemp(prefix="bench-", dir=cephfs))
            stack.callback(shutil.rmtree, base, ignore_errors=True)
            found.append(posix_backend("cephfs", base))
        if importlib.util.find_spec("s3fs") is not None:
            import s3_server  # noqa: PLC0415 - needs the s3-test extra

            starters = {"moto": s3_server.moto_server, "seaweedfs": s3_server.seaweedfs_server}
            for name, starter in starters.items():
                if name in args.skip:
                    continue
                try:
                    server = stack.enter_context(starter())
                except RuntimeError as exc:
                    print(f"[bench_storage] {name} unavailable: {exc}", file=sys.stderr)
                    continue
                options = s3_server.storage_options(server)
                found.append(s3_backend(name, options, args.s3_delay / 1000))
        yield found


def main() -> None:
    parser = common_arguments(__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--cephfs", metavar="MNT", help="also benchmark this ceph-fuse mount")
    parser.add_argument(
        "--cephfs-second",
        metavar="MNT2",
        type=Path,
        help="a second mount of the --cephfs filesystem: also time cross-client visibility",
    )
    parser.add_argument("--skip", nargs="*", default=[], help="backends to leave out")
    parser.add_argument(
        "--s3-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="wait this long before each S3 request, as a network round trip would",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    floor = Report("storage: store vs its backend's raw floor", dict(sizes))
    versus_disk = Report("storage: each backend vs local disk, same operation", dict(sizes))
    with (
        tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-storage-") as tmp,
        backends(args, Path(tmp)) as found,
    ):
        results = {b.name: run_backend(b, sizes) for b in found}
        history = [run_history(b, [mac_of(i) for i in range(sizes["fleet"])], sizes) for b in found]
    local = results["local"]
    for name, timings in results.items():
        for op, floor_op, target in OPS:
            floor.add(
                f"{name} {op}",
                timings[f"{name} {op}"],
                baseline=timings[f"{name} {floor_op}"],
                target=target,
                paired=True,  # each floor was timed in the same rounds as its operation
            )
            if name != "local":
                versus_disk.add(
                    f"{name} {op}", timings[f"{name} {op}"], baseline=local[f"local {op}"]
                )
    floor.print()
    versus_disk.print()
    for report in history:
        report.print()
    if args.cephfs and args.cephfs_second:
        for line in cross_client(Path(args.cephfs), args.cephfs_second, sizes):
            print(line)
    if args.json:
        reports = (floor, versus_disk, *history)
        args.json.write_text("[\n" + ",\n".join(repr(r.to_json()) for r in reports) + "\n]\n")


if __name__ == "__main__":
    main()
