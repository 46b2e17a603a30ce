"""History pruning in the background: off the write path, failure-tolerant, exit- and fork-safe.

What every backend shows (pruned to the limit once settled, bursts keep every version within
the limit) is in the store contract suite; these are the pruner's own cases, on real memory
backends (subclassed to hold or refuse removals), real directories and real processes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

from iot_config_core import ConfigStore, open_store
from iot_config_core.mac import MacAddress
from iot_config_core.memory_backend import MemoryBackend
from iot_config_core.testing import MAC_A, etag_of

LIMIT = 4  # a slack of one: a device is pruned once it has six records
REPO = Path(__file__).resolve().parents[1]


class _RefusingRemovals(MemoryBackend):
    """A memory backend whose removals fail while ``refusing`` is set, as in a storage outage."""

    refusing = True

    def remove_hidden(self, paths: Sequence[str]) -> None:
        if self.refusing:
            raise OSError("removal refused")
        super().remove_hidden(paths)


class _HeldRemovals(MemoryBackend):
    """A memory backend whose removals wait for ``release``: a prune that takes its time."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.removals = 0

    def remove_hidden(self, paths: Sequence[str]) -> None:
        self.removals += 1
        self.entered.set()
        assert self.release.wait(timeout=60), "the test never released the prune"
        super().remove_hidden(paths)


class _GatedRemovals(MemoryBackend):
    """A memory backend whose removals each wait for a pass through ``gate``, one at a time."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.entered = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)

    def remove_hidden(self, paths: Sequence[str]) -> None:
        self.entered.release()
        assert self.gate.acquire(timeout=60), "the test never let the removal through"
        super().remove_hidden(paths)


def _store(backend: MemoryBackend, limit: int = LIMIT) -> ConfigStore:
    backend.create_root()
    return ConfigStore(backend, history_limit=limit)


def _records(store: ConfigStore, mac: MacAddress = MAC_A) -> int:
    return len(store.backend.list_hidden(f".history/{mac}"))


def _last(count: int, newest: int) -> list[str | None]:
    """The ETags of ``{"n": newest}`` and the versions before it, newest first."""
    return [etag_of({"n": n}) for n in range(newest, newest - count, -1)]


def test_writes_return_while_a_prune_is_held_and_the_device_is_queued_once() -> None:
    backend = _HeldRemovals("/fleet")
    store = _store(backend)
    for n in range(LIMIT + LIMIT // 4 + 1):
        store.put(MAC_A, {"n": n})
    assert backend.entered.wait(timeout=60)
    # The prune is stuck in its removal; writes go on without it, and their versions show.
    for n in range(6, 16):
        store.put(MAC_A, {"n": n})
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 15)
    assert not store.wait_for_background(timeout=0.05)
    backend.release.set()
    assert store.wait_for_background(timeout=60)
    # Ten writes asked for a prune while one ran: the device was pruned once more, not ten times.
    assert backend.removals == 2
    assert _records(store) == LIMIT
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 15)


def test_the_count_stays_right_when_prunes_and_writes_interleave() -> None:
    # Without a slack, every write past the limit asks for a prune; the pruner is let through
    # one removal at a time, so its count adjustments land between particular writes.
    limit = 3
    backend = _GatedRemovals("/fleet")
    store = _store(backend, limit)
    for n in range(limit + 1):
        store.put(MAC_A, {"n": n})
    assert backend.entered.acquire(timeout=60)  # the prune of the fourth write, held
    store.put(MAC_A, {"n": 4})  # asks for a prune while one runs
    backend.gate.release()
    assert backend.entered.acquire(timeout=60)  # the first adjusted the count; the next is held
    store.put(MAC_A, {"n": 5})  # counts on from the adjusted count, and asks again
    for _ in range(10):
        backend.gate.release()
    # The last write's prune must still find the device over the limit and run.
    assert store.wait_for_background(timeout=60)
    assert _records(store) == limit
    assert [v.etag for v in store.history(MAC_A)] == _last(limit, 5)


def test_a_failed_prune_is_logged_and_the_next_write_prunes_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = _RefusingRemovals("/fleet")
    store = _store(backend)
    with caplog.at_level(logging.WARNING, logger="iot_config_core.history"):
        for n in range(8):
            store.put(MAC_A, {"n": n})
        assert store.wait_for_background(timeout=60)
    failures = [r for r in caplog.records if "could not prune the history" in r.getMessage()]
    assert failures, caplog.text
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in failures)
    assert _records(store) == 8
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 7)
    # The count this process remembers is still over the limit: its next write prunes.
    backend.refusing = False
    store.put(MAC_A, {"n": 8})
    assert store.wait_for_background(timeout=60)
    assert _records(store) == LIMIT
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 8)


def _fill(root: Path, versions: int) -> None:
    """``versions`` versions of MAC_A, none pruned (a generous limit)."""
    store = open_store(str(root), history_limit=100)
    for n in range(versions):
        store.put(MAC_A, {"n": n})


def test_a_cli_write_leaves_the_history_pruned_at_exit(tmp_path: Path) -> None:
    _fill(tmp_path, 30)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "iot_config_server.cli",
            "--store",
            str(tmp_path),
            "put",
            str(MAC_A),
        ],
        input=b'{"n": 30}',
        env={**os.environ, "IOT_CONFIG_HISTORY_LIMIT": str(LIMIT)},
        capture_output=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    store = open_store(str(tmp_path), history_limit=LIMIT)
    assert _records(store) == LIMIT
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 30)


def test_a_writer_killed_before_it_pruned_leaves_it_to_the_next_write(tmp_path: Path) -> None:
    _fill(tmp_path, 30)
    # SIGKILL right after the write returns: the prune it queued most likely never ran.
    script = (
        "import os, signal, sys\n"
        "from iot_config_core import open_store\n"
        f"store = open_store(sys.argv[1], history_limit={LIMIT})\n"
        f"store.put({str(MAC_A)!r}, {{'n': 30}})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=120, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = open_store(str(tmp_path), history_limit=LIMIT)
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 30)
    store.put(MAC_A, {"n": 31})  # a first write of this process lists: over the limit, it prunes
    assert store.wait_for_background(timeout=60)
    assert _records(store) == LIMIT
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 31)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_prunes_on_its_own_even_with_a_lock_held_at_the_fork(
    tmp_path: Path,
) -> None:
    store = open_store(str(tmp_path), history_limit=LIMIT)
    for n in range(8):
        store.put(MAC_A, {"n": n})
    assert store.wait_for_background(timeout=60)
    state = store._history._process  # the lock another thread may hold at a fork
    with state.lock, warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that runs threads: that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
        if pid == 0:  # the child: the parent's lock stays held here and its pruner is not here
            status = 1
            try:
                for n in range(8, 16):
                    store.put(MAC_A, {"n": n})
                settled = store.wait_for_background(timeout=30)
                status = 0 if settled and _records(store) <= LIMIT + LIMIT // 4 else 2
            finally:
                os._exit(status)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if waited == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung: it waited for a lock or a pruner of its parent")
    assert os.waitstatus_to_exitcode(waited[1]) == 0
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 15)
    # The parent's own pruner still works after the fork.
    for n in range(16, 24):
        store.put(MAC_A, {"n": n})
    assert store.wait_for_background(timeout=60)
    assert _records(store) <= LIMIT + LIMIT // 4
    assert [v.etag for v in store.history(MAC_A)] == _last(LIMIT, 23)
