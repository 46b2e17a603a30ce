"""Crash safety on a real directory: a writer killed with SIGKILL never leaves a torn document.

A child process rewrites one config in a loop through `ConfigStore` and is killed at random
moments; after every kill the document must parse and be one of the versions the child wrote,
the listing must show exactly that config, and leftover temp files must stay invisible until they
are old enough to be reaped.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import iot_config_core
from iot_config_core import MacAddress, NotFoundError, open_store
from iot_config_core.posix_backend import STALE_TEMP_SECONDS, TEMP_SUFFIX

MAC = MacAddress.parse("aa:bb:cc:00:00:01")
# At least MIN_ROUNDS kills, however slow the machine (a count, so a loaded CI box cannot make
# the test fail or pass vacuously), then more up to ROUNDS while the time budget lasts.
MIN_ROUNDS = 10
ROUNDS = 30
TIME_BUDGET_SECONDS = 8.0

# The child writes version i as {"version": i, "pad": <size derived from i>}: sizes vary from a
# few bytes to ~60 KB so a kill often lands mid-write or mid-fsync, and every version can be
# recognised from its content alone.
WRITER = """
import sys
from iot_config_core import open_store
store = open_store(sys.argv[1])
i = int(sys.argv[2])
while True:
    store.put(sys.argv[3], {"version": i, "pad": "x" * ((i * 7919) % 60000)})
    if i == int(sys.argv[2]):
        print("ready", flush=True)
    i += 1
"""


def is_written_version(content: Any) -> bool:
    if not isinstance(content, dict) or set(content) != {"version", "pad"}:
        return False
    version = content["version"]
    return isinstance(version, int) and content["pad"] == "x" * ((version * 7919) % 60000)


def child_env() -> dict[str, str]:
    package_parent = str(Path(iot_config_core.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


def run_and_kill(root: Path, start: int, delay: float, writer: str = WRITER) -> list[str]:
    """Start ``writer``, kill it ``delay`` seconds after it is ready; the lines it printed since.

    A line cut by the kill (no newline) is dropped: nobody could have relied on it.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", writer, str(root), str(start), str(MAC)],
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n", "writer did not start"
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    return [line.decode() for line in out.split(b"\n")[:-1]]


@pytest.mark.slow
def test_sigkilled_writer_never_tears_the_document(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    store = open_store(str(tmp_path))
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    rounds = 0
    versions: set[int] = set()
    while rounds < MIN_ROUNDS or (rounds < ROUNDS and time.monotonic() < deadline):
        start = rounds * 1_000_000
        run_and_kill(tmp_path, start, rng.uniform(0.0, 0.06))
        rounds += 1
        got = store.get(MAC)  # a torn file would raise CorruptDocumentError here
        assert is_written_version(got.content), (seed, got.content)
        assert got.content["version"] >= start, (
            seed
        )  # this round's writer got through at least once
        versions.add(got.content["version"])
        raw = store.get_raw(MAC)
        assert raw.etag == got.etag
        listing = store.listing()
        assert [s.mac_address for s in listing.summaries] == [MAC], seed
        assert listing.skipped == (), seed
        visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
        assert visible == [MAC.file_name], (seed, visible)
    # The killed writers' locks died with them: a conditional write goes straight through.
    current = store.get(MAC)
    store.put(MAC, {"after": "crashes"}, if_match=current.etag)
    assert store.get(MAC).content == {"after": "crashes"}


def _temp_name(tag: str) -> str:
    return f".{MAC.file_name}.{tag}{TEMP_SUFFIX}"


def test_stale_temp_files_are_ignored_then_reaped(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put(MAC, {"deviceName": "real"})
    fresh = tmp_path / _temp_name("aaaaaaaaaaaa")
    stale = tmp_path / _temp_name("bbbbbbbbbbbb")
    half_written = b'{"deviceName": "torn'
    fresh.write_bytes(half_written)
    stale.write_bytes(half_written)
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    summaries = store.list()
    assert [(s.mac_address, s.device_name) for s in summaries] == [(MAC, "real")]
    assert store.listing().skipped == ()
    assert not stale.exists(), "a temp file older than the threshold is reaped"
    assert fresh.exists(), "a recent temp file may belong to a live writer: it is left alone"
    assert store.get(MAC).content == {"deviceName": "real"}
    # Hidden files that are not temp files are neither listed nor removed.
    other = tmp_path / ".notes"
    other.write_bytes(b"x")
    os.utime(other, (old, old))
    store.list()
    assert other.exists()


def test_writes_leave_no_temp_files(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    for i in range(20):
        store.put(MAC, {"i": i})
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert leftovers == []


# The same writer, printing the ETag of every write once `put` returned (acknowledged), with a
# history long enough to keep every version of the test.
RECORDING_WRITER = """
import sys
from iot_config_core import open_store
store = open_store(sys.argv[1], history_limit=100_000)
i = int(sys.argv[2])
print("ready", flush=True)
while True:
    stored = store.put(sys.argv[3], {"version": i, "pad": "x" * ((i * 7919) % 60000)})
    print(stored.etag, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_sigkilled_writer_history_has_every_acknowledged_write_once(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    store = open_store(str(tmp_path), history_limit=100_000)
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    acknowledged: list[str] = []
    rounds = 0
    while rounds < MIN_ROUNDS or (rounds < ROUNDS and time.monotonic() < deadline):
        delay = rng.uniform(0.0, 0.06)
        acknowledged += run_and_kill(tmp_path, rounds * 1_000_000, delay, RECORDING_WRITER)
        rounds += 1
        if not store.exists(MAC):  # killed before its first write: nothing to show yet
            assert not acknowledged, seed
            with pytest.raises(NotFoundError):
                store.history(MAC)
            continue
        current = store.get(MAC)
        history = store.history(MAC)
        # The current config is the head of its history, recorded by the writer, never
        # "external": the record was durable before the swap.
        assert (history[0].etag, history[0].source) == (current.etag, "library"), seed
        recorded = [v.etag for v in reversed(history)]
        assert len(set(recorded)) == len(recorded), seed  # each version once
        it = iter(recorded)
        assert all(etag in it for etag in acknowledged), seed  # every acknowledged one, in order
        # At most the one write per round that finished but was killed before it said so.
        assert len(recorded) - len(acknowledged) <= rounds, seed
    assert acknowledged, "no write was acknowledged"
    for version in [*store.history(MAC)[:3], *rng.sample(store.history(MAC), 5)]:
        assert version.etag is not None
        assert is_written_version(store.version(MAC, version.etag).content), seed
