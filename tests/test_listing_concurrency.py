"""Concurrent listings share scans, yet never answer a caller with a scan older than its call.

The store runs over a real `PosixBackend` on a real directory whose first scan is held open by
the test (after it has read the directory), so "a scan is running" is a fact, not a timing guess.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from iot_config_core import ConfigStore, Listing, StoreUnavailableError
from iot_config_core.posix_backend import PosixBackend
from iot_config_core.testing import MAC_A, MAC_B

# Long enough for started threads to reach `listing()` on a loaded machine.
ARRIVAL_SECONDS = 0.5
WAIT_SECONDS = 30.0


class HeldFirstScan(PosixBackend):
    """A real POSIX backend whose first scan, once it has read the directory, waits for a go."""

    def __init__(self, root: str, *, fail_first: bool = False) -> None:
        super().__init__(root)
        self.scans = 0
        self.first_scanned = threading.Event()
        self.go = threading.Event()
        self._fail_first = fail_first
        self._count_lock = threading.Lock()

    def scan(self) -> list[tuple[str, Hashable]]:
        with self._count_lock:
            self.scans += 1
            number = self.scans
        found = super().scan()
        if number == 1:
            self.first_scanned.set()
            assert self.go.wait(WAIT_SECONDS)
            if self._fail_first:
                raise OSError("the first scan failed")
        return found


def macs(listing: Listing) -> list[str]:
    return [str(s.mac_address) for s in listing.summaries]


def start_first_scan(
    pool: ThreadPoolExecutor, store: ConfigStore, backend: HeldFirstScan
) -> Future[Listing]:
    first = pool.submit(store.listing)
    assert backend.first_scanned.wait(WAIT_SECONDS)
    return first


def test_waiters_share_one_scan_that_sees_writes_acknowledged_before_their_call(
    tmp_path: Path,
) -> None:
    backend = HeldFirstScan(str(tmp_path))
    store = ConfigStore(backend, list_watch=False)  # the scans under test are full scans
    writer = ConfigStore(PosixBackend(str(tmp_path)))
    with ThreadPoolExecutor(max_workers=5) as pool:
        first = start_first_scan(pool, store, backend)
        writer.put(MAC_A, {"deviceName": "written while the first scan ran"})
        later = [pool.submit(store.listing) for _ in range(4)]
        time.sleep(ARRIVAL_SECONDS)
        backend.go.set()
        assert macs(first.result(WAIT_SECONDS)) == []  # it read the directory before the write
        answers = [f.result(WAIT_SECONDS) for f in later]
    for answer in answers:
        assert macs(answer) == [str(MAC_A)]
    assert backend.scans == 2  # four callers that arrived during one scan shared the next
    assert store.count() == 1


def test_a_failed_shared_scan_is_not_handed_to_waiters(tmp_path: Path) -> None:
    backend = HeldFirstScan(str(tmp_path), fail_first=True)
    store = ConfigStore(backend, list_watch=False)  # the scans under test are full scans
    store.put(MAC_B, {"deviceName": "b"})
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = start_first_scan(pool, store, backend)
        later = [pool.submit(store.listing) for _ in range(2)]
        time.sleep(ARRIVAL_SECONDS)
        backend.go.set()
        with pytest.raises(StoreUnavailableError):
            first.result(WAIT_SECONDS)
        answers = [f.result(WAIT_SECONDS) for f in later]
    for answer in answers:
        assert macs(answer) == [str(MAC_B)]
    assert backend.scans == 2


def test_sequential_listings_each_scan(tmp_path: Path) -> None:
    backend = HeldFirstScan(str(tmp_path))
    backend.go.set()
    store = ConfigStore(backend, list_watch=False)  # the scans under test are full scans
    store.listing()
    store.put(MAC_A, {"deviceName": "a"})
    assert macs(store.listing()) == [str(MAC_A)]
    assert backend.scans == 2
