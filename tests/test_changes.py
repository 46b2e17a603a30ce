"""The change feed: every writer seen, resync from a baseline, corrupt files held back."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_config_core import (
    Change,
    ChangeFeed,
    ConfigStore,
    MacAddress,
    StoreUnavailableError,
    open_store,
    watch,
)
from iot_config_core.backend import Blob
from iot_config_core.posix_backend import PosixBackend

A = MacAddress.parse("02:00:00:00:00:0a")
B = MacAddress.parse("02:00:00:00:00:0b")
C = MacAddress.parse("02:00:00:00:00:0c")


class CountedReads(PosixBackend):
    """The local backend, noting the name of every config it reads; it refuses ``refused``.

    Refusing stands in for a file's permissions (the tests may run as root, whom they do not
    stop).
    """

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[str] = []
        self.refused: set[str] = set()

    def read(self, name: str, limit: int) -> Blob | None:
        self.reads.append(name)
        if name in self.refused:
            raise PermissionError(errno.EACCES, "Permission denied", name)
        return super().read(name, limit)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def test_a_fresh_feed_starts_from_now(root: Path) -> None:
    store = open_store(str(root))
    store.put(A, {"n": 1})
    feed = ChangeFeed(store)
    assert feed.poll() == []
    assert feed.state == {A: store.etag(A)}
    assert feed.poll() == []


def test_writes_by_another_store_object_and_by_hand_are_seen(root: Path) -> None:
    feed = ChangeFeed(open_store(str(root)))
    feed.poll()
    other = open_store(str(root))  # another process, the CLI, a replica: its own store object
    a = other.put(A, {"n": 1}).etag
    b = other.put(B, {"n": 1}).etag
    assert feed.poll() == [Change(A, a), Change(B, b)]
    (root / B.file_name).write_text('{"n": 2}')  # an editor, by hand
    other.delete(A)
    changes = feed.poll()
    assert changes == [Change(A, None), Change(B, other.etag(B))]
    assert changes[0].deleted
    assert not changes[1].deleted


def test_a_corrupt_file_is_neither_changed_nor_deleted_until_repaired(root: Path) -> None:
    store = open_store(str(root))
    etag = store.put(A, {"n": 1}).etag
    feed = ChangeFeed(store)
    feed.poll()
    (root / A.file_name).write_text('{"n": ')  # a half-saved edit
    assert feed.poll() == []
    assert feed.state == {A: etag}
    repaired = store.put(A, {"n": 2}).etag
    assert feed.poll() == [Change(A, repaired)]


def test_a_vouched_version_is_neither_read_again_nor_parsed(root: Path) -> None:
    """A publisher reads its own write's ETag to announce it; the next poll must not read it."""
    backend = CountedReads(str(root))
    store = ConfigStore(backend)
    feed = ChangeFeed(store)
    feed.poll()
    written = open_store(str(root)).put(A, {"n": 1}).etag  # the server's worker, say
    assert store.etag(A) == written
    feed.vouch(A, written)
    backend.reads.clear()
    assert feed.poll() == [Change(A, written)]
    assert backend.reads == []
    # Not vouched for (a dry run, say, read it): read once more, to be parsed.
    written = open_store(str(root)).put(A, {"n": 2}).etag
    assert store.etag(A) == written
    backend.reads.clear()
    assert feed.poll() == [Change(A, written)]
    assert backend.reads == [A.file_name]


def test_a_damaged_version_read_with_etag_is_still_held_back(root: Path) -> None:
    store = open_store(str(root))
    etag = store.put(A, {"n": 1}).etag
    feed = ChangeFeed(store)
    feed.poll()
    (root / A.file_name).write_text('{"n": ')
    assert store.etag(A) is not None  # hashed, not parsed: the feed must still parse it
    assert feed.poll() == []
    assert feed.state == {A: etag}
    assert store.etags().damaged == {A}


def test_a_changed_file_is_read_once_and_an_unchanged_fleet_not_at_all(root: Path) -> None:
    backend = CountedReads(str(root))
    feed = ChangeFeed(ConfigStore(backend))
    other = open_store(str(root))
    for mac in (A, B, C):
        other.put(mac, {"n": 1})
    feed.poll()
    assert sorted(backend.reads) == [A.file_name, B.file_name, C.file_name]
    backend.reads.clear()
    assert feed.poll() == []
    b = other.put(B, {"n": 2}).etag
    assert feed.poll() == [Change(B, b)]
    assert feed.poll() == []
    (root / B.file_name).touch()  # a new version token, the same bytes: no change
    assert feed.poll() == []
    assert backend.reads == [B.file_name, B.file_name]


@pytest.mark.parametrize("list_watch", [True, False])
def test_an_unreadable_file_is_held_back_until_it_can_be_read(
    root: Path, *, list_watch: bool
) -> None:
    backend = CountedReads(str(root))
    store = ConfigStore(backend, list_watch=list_watch)
    etag = store.put(A, {"n": 1}).etag
    feed = ChangeFeed(store)
    feed.poll()
    backend.refused.add(A.file_name)
    open_store(str(root)).put(A, {"n": 2})
    assert feed.poll() == []
    assert feed.state == {A: etag}
    assert store.etags().damaged == {A}
    backend.refused.clear()
    os.chmod(root / A.file_name, 0o644)  # what a fix of its permissions does
    assert feed.poll() == [Change(A, store.etag(A))]


def test_feeds_polling_in_turn_each_see_every_change(root: Path) -> None:
    """Two feeds on one store: each poll of one moves the store's listing past the other."""
    store = open_store(str(root))
    first, second = ChangeFeed(store, {}), ChangeFeed(store, {})
    a = store.put(A, {"n": 1}).etag
    assert first.poll() == [Change(A, a)]
    b = store.put(B, {"n": 1}).etag
    assert first.poll() == [Change(B, b)]
    store.delete(A)
    assert second.poll() == [Change(B, b)]
    assert first.poll() == [Change(A, None)]
    assert first.state == second.state == {B: b}


def test_resync_reports_every_difference_from_a_baseline(root: Path) -> None:
    store = open_store(str(root))
    a = store.put(A, {"n": 1}).etag
    b = store.put(B, {"n": 1}).etag
    # What a retained topic still holds: A current, B stale, C deleted while nobody watched.
    baseline = {A: a, B: "stale", C: "gone"}
    assert ChangeFeed(store, baseline).poll() == [Change(B, b), Change(C, None)]
    feed = ChangeFeed(store)
    feed.poll()
    assert feed.resync(baseline) == [Change(B, b), Change(C, None)]
    assert ChangeFeed(store, {}).poll() == [Change(A, a), Change(B, b)]


def test_a_failed_listing_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    store = open_store(str(root))
    feed = ChangeFeed(store)
    feed.poll()
    etag = store.put(A, {"n": 1}).etag
    hidden = tmp_path / "hidden"
    os.rename(root, hidden)
    with pytest.raises(StoreUnavailableError):
        feed.poll()
    os.rename(hidden, root)
    assert feed.poll() == [Change(A, etag)]


def test_watch_yields_until_stopped(root: Path) -> None:
    store = open_store(str(root))
    first = store.put(A, {"n": 1}).etag
    stop = threading.Event()
    seen: list[Change] = []
    got_one = threading.Event()

    def consume() -> None:
        for change in watch(store, interval=0.05, baseline={}, stop=stop):
            seen.append(change)
            got_one.set()

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        assert got_one.wait(30)
        second = open_store(str(root)).put(A, {"n": 2}).etag
        deadline = time.monotonic() + 30
        while Change(A, second) not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert seen == [Change(A, first), Change(A, second)]


def test_watch_refuses_a_silly_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        next(watch(open_store("memory://"), interval=0))


MACS = [MacAddress(n) for n in range(1, 5)]
operations = st.lists(
    st.tuples(st.sampled_from(MACS), st.one_of(st.none(), st.integers(0, 3))), max_size=12
)


@given(batches=st.lists(operations, max_size=5))
def test_changes_replayed_on_the_old_state_give_the_new_one(
    batches: list[list[tuple[MacAddress, int | None]]],
) -> None:
    """Whatever writes happen between polls, old state + changes = what the store lists."""
    store: ConfigStore = open_store("memory://", create=True)
    # The second feed polls every other batch: the first's polls in between make it diff
    # everything, the first diffs only what each listing changed.
    feeds = (ChangeFeed(store, {}), ChangeFeed(store, {}))
    mirrors: tuple[dict[MacAddress, str], ...] = ({}, {})
    for number, batch in enumerate(batches):
        for mac, value in batch:
            if value is None:
                if store.exists(mac):
                    store.delete(mac)
            else:
                store.put(mac, {"v": value})
        for feed, mirror in zip(feeds[: 1 + number % 2], mirrors, strict=False):
            for change in feed.poll():
                assert mirror.get(change.mac_address) != change.etag  # only real changes
                if change.etag is None:
                    del mirror[change.mac_address]
                else:
                    mirror[change.mac_address] = change.etag
            assert mirror == {s.mac_address: s.etag for s in store.listing().summaries}
