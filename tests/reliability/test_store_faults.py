"""Storage faults under a live `ConfigStore` on real filesystems.

For each fault (root moved away or deleted, filesystem remounted read-only, filesystem full) the
same store object must: raise `StoreUnavailableError` for writes (never a bare ``OSError``), leave
every stored byte as it was and no temp file behind, report the fault from ``check()`` (readiness),
and work again as soon as the fault is removed, without being re-created.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iot_config_core import ConfigStore, NotFoundError, StoreUnavailableError, open_store
from iot_config_core.posix_backend import PosixBackend

from .conftest import Figure
from .slow_backend import SlowBackend
from .support import remount, snapshot, temp_files, tmpfs

MACS = [f"02-00-00-00-00-{i:02x}" for i in range(8)]
NEW_MAC = "02-00-00-00-00-ff"


def _populate(store: ConfigStore) -> None:
    for i, mac in enumerate(MACS):
        store.put(mac, {"deviceName": f"dev{i}", "enableOTA": bool(i % 2), "pad": "x" * 100 * i})
    store.list()
    for mac in MACS:
        store.get_raw(mac)  # warm the caches, so a stale cache would show


def _every_write_fails(store: ConfigStore) -> int:
    """Try each kind of write; each must raise StoreUnavailableError. Returns how many ran."""
    attempts: list[Callable[[], object]] = [
        lambda: store.put(NEW_MAC, {"deviceName": "new"}),
        lambda: store.put(NEW_MAC, {"deviceName": "new"}, create_only=True),
        lambda: store.put(MACS[1], {"deviceName": "changed", "big": "y" * 5000}),
        lambda: store.put(MACS[2], {"deviceName": "changed"}, if_match=store.etag(MACS[2]) or "*"),
        store.check,
    ]
    for attempt in attempts:
        with pytest.raises(StoreUnavailableError) as caught:
            attempt()
        assert isinstance(caught.value.__cause__, OSError | None)
    return len(attempts)


def _recovers(store: ConfigStore, root: Path) -> None:
    store.check()
    written = store.put(NEW_MAC, {"deviceName": "after"})
    assert store.get(NEW_MAC).etag == written.etag
    assert store.get_raw(NEW_MAC).etag == written.etag
    store.put(MACS[1], {"deviceName": "after"}, if_match=store.get(MACS[1]).etag)
    store.delete(NEW_MAC)
    assert {s.mac_address.__str__() for s in store.list()} == set(MACS)
    assert temp_files(root) == []


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB private tmpfs holding the store root."""
    mount = tmp_path / "mnt"
    with tmpfs(mount, "2m"):
        yield mount


def test_root_moved_away_and_back(tmp_path: Path, figure: Figure) -> None:
    root = tmp_path / "configs"
    store = open_store(str(root), create=True)
    _populate(store)
    before = snapshot(root)
    os.rename(root, tmp_path / "away")

    n = _every_write_fails(store)
    for mac in MACS[:2]:
        with pytest.raises(StoreUnavailableError):  # an outage, not "no config"
            store.get_raw(mac)
        with pytest.raises(StoreUnavailableError):
            store.get(mac)
    with pytest.raises(StoreUnavailableError):
        store.list()
    with pytest.raises(StoreUnavailableError):
        store.delete(MACS[0])
    assert not root.exists(), "the store re-created a vanished root on its own"

    os.rename(tmp_path / "away", root)
    assert snapshot(root) == before
    assert temp_files(root) == []
    _recovers(store, root)
    figure("write attempts refused while root missing", n + 5)


def test_root_deleted_then_recreated_empty(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    store = open_store(str(root), create=True)
    _populate(store)
    shutil.rmtree(root)
    _every_write_fails(store)
    root.mkdir()
    # Cached documents of a fleet that no longer exists must not be served.
    for mac in MACS:
        with pytest.raises(NotFoundError):
            store.get_raw(mac)
    assert store.list() == []
    store.put(NEW_MAC, {"deviceName": "fresh"})
    assert [str(s.mac_address) for s in store.list()] == [NEW_MAC]


def test_read_only_filesystem(mounted: Path, figure: Figure) -> None:
    root = mounted / "configs"
    store = open_store(str(root), create=True)
    _populate(store)
    before = snapshot(root)
    remount(mounted, "ro")
    try:
        probe = root / "probe"
        with pytest.raises(OSError) as denied:  # root is not stopped by modes, but by ro mounts
            probe.write_bytes(b"x")
        assert denied.value.errno == errno.EROFS
        n = _every_write_fails(store)
        with pytest.raises(StoreUnavailableError):
            store.delete(MACS[0])
        # Reads keep working: devices still boot while the share is read-only.
        for mac in MACS:
            assert store.get_raw(mac).data == before[f"{mac}.json"]
        assert len(store.list()) == len(MACS)
    finally:
        remount(mounted, "rw")
    assert snapshot(root) == before
    assert temp_files(root) == []
    _recovers(store, root)
    figure("write attempts refused while read-only", n + 1)


def _write_forever(fd: int, data: bytes) -> None:
    while os.write(fd, data):
        pass


def _fill(mount: Path) -> Path:
    """Fill the filesystem at ``mount`` until the kernel says ENOSPC; return the filler file."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 512, 1):  # big writes first, then the last partial page
            with pytest.raises(OSError) as full:
                _write_forever(fd, b"\0" * chunk)
            assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_filesystem_full(mounted: Path, figure: Figure) -> None:
    root = mounted / "configs"
    store = open_store(str(root), create=True)
    _populate(store)
    before = snapshot(root)
    filler = _fill(mounted)
    try:
        n = _every_write_fails(store)
        assert snapshot(root) == before
        assert temp_files(root) == []
        for mac in MACS:
            assert store.get_raw(mac).data == before[f"{mac}.json"]
        free = os.statvfs(mounted)
        figure("free bytes while full", free.f_bavail * free.f_frsize)
    finally:
        filler.unlink()
    # Deleting needs no space; it must work again immediately, as must everything else.
    _recovers(store, root)
    figure("write attempts refused while full", n)


def test_fault_during_many_writes_never_tears(mounted: Path, figure: Figure) -> None:
    """Fill the disk while documents keep growing: every write lands whole or not at all."""
    root = mounted / "configs"
    store = open_store(str(root), create=True)
    _populate(store)
    accepted = refused = 0
    stored = {mac: store.get(mac).etag for mac in MACS}
    for i in range(200):
        if refused >= 20:
            break
        mac = MACS[i % len(MACS)]
        size = int(min(1000 * 1.3**i, 900_000))
        try:
            stored[mac] = store.put(mac, {"deviceName": "grow", "pad": "z" * size}).etag
            accepted += 1
        except StoreUnavailableError:
            refused += 1
    assert refused > 0, "the 2 MiB filesystem never filled up"
    for mac, etag in stored.items():
        assert store.get(mac).etag == etag
    assert temp_files(root) == []
    figure("growing writes accepted/refused on a 2 MiB fs", f"{accepted}/{refused}")


def test_slow_backend_is_real_and_slow(tmp_path: Path) -> None:
    """The latency wrapper the server tests use: same data as the real backend, added delay."""
    root = tmp_path / "configs"
    root.mkdir()
    store = ConfigStore(SlowBackend(PosixBackend(str(root)), 0.05))
    started = time.monotonic()
    store.put(NEW_MAC, {"deviceName": "slow"})
    assert time.monotonic() - started >= 0.1
    assert open_store(str(root)).get(NEW_MAC).content == {"deviceName": "slow"}
