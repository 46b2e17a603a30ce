"""The store contract on a real local directory, plus what is specific to POSIX files."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from iot_config_core import (
    ConfigStore,
    MacAddress,
    NotFoundError,
    StoreMissingError,
    StoreUnavailableError,
    UnsupportedStoreError,
    encode_document,
    local_store_root,
    open_store,
    register_backend,
)
from iot_config_core import store as store_module
from iot_config_core.posix_backend import LOCK_DIR, PosixBackend
from iot_config_core.testing import MAC_A, MAC_B, MAC_C, PosixStoreContract

root_of = PosixStoreContract.root_of


class TestLocalStore(PosixStoreContract):
    @pytest.fixture(autouse=True)
    def _base(self, tmp_path: Path) -> None:
        self.base = tmp_path


def test_entries_that_are_not_regular_files_are_not_configs(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put(MAC_A, {"a": 1})
    (tmp_path / MAC_B.file_name).mkdir()
    (tmp_path / MAC_C.file_name).symlink_to(MAC_C.file_name)  # a symlink loop
    (tmp_path / "00-00-00-00-00-09.json").symlink_to("nowhere.json")  # dangling
    assert [s.mac_address for s in store.list()] == [MAC_A]
    with pytest.raises(NotFoundError):
        store.get(MAC_B)
    with pytest.raises(NotFoundError):
        store.get_raw(MAC_B)
    assert not store.exists(MAC_B)


def test_a_hand_copied_legacy_name_is_skipped_with_its_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(str(tmp_path))
    (tmp_path / "AA-BB-CC-DD-EE-02.json").write_bytes(b'{"deviceName": "x"}')
    (tmp_path / "notes.json").write_bytes(b"{}")
    with caplog.at_level("WARNING"):
        assert store.list() == []
    legacy, stray = sorted(r.getMessage() for r in caplog.records)
    assert "devices ask for aa-bb-cc-dd-ee-02.json" in legacy
    assert f"'iot-config --store {tmp_path} import {tmp_path}'" in legacy
    assert "not a <canonical-mac>.json file name" in stray


def test_symlinked_config_is_served(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    (tmp_path / "shared.conf").write_bytes(b'{"deviceName": "shared"}')
    (tmp_path / MAC_A.file_name).symlink_to("shared.conf")
    assert store.get(MAC_A).content == {"deviceName": "shared"}
    assert [s.device_name for s in store.list()] == ["shared"]


def test_wedged_lock_holder_is_an_outage_not_a_hang(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put(MAC_A, {"a": 1})
    impatient = ConfigStore(PosixBackend(str(tmp_path), lock_timeout=0.2))
    lock = os.open(tmp_path / LOCK_DIR / f"{MAC_A.file_name}.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a peer that never lets go
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as info:
            impatient.put(MAC_A, {"a": 2})
        assert time.monotonic() - started < 5
        assert isinstance(info.value.__cause__, TimeoutError)
        with pytest.raises(StoreUnavailableError):
            impatient.delete(MAC_A)
        assert impatient.get(MAC_A).content == {"a": 1}  # reads never wait for the lock
    finally:
        os.close(lock)
    impatient.put(MAC_A, {"a": 3})
    assert store.get(MAC_A).content == {"a": 3}


def test_lock_directory_is_recreated(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put(MAC_A, {"a": 1})
    shutil.rmtree(tmp_path / LOCK_DIR)
    store.put(MAC_A, {"a": 2})
    assert store.get(MAC_A).content == {"a": 2}


def test_create_root_and_url_forms(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    store = open_store(f"file://{target}", create=True)
    assert target.is_dir()
    store.put(MAC_A, {"a": 1})
    assert open_store(str(target)).get(MAC_A).content == {"a": 1}
    assert open_store(f"local://{target}").get(MAC_A).content == {"a": 1}
    assert (target / MAC_A.file_name).read_bytes() == b'{\n  "a": 1\n}\n'


def test_small_raw_cache_still_serves_the_right_bytes(tmp_path: Path) -> None:
    store = ConfigStore(PosixBackend(str(tmp_path)), raw_cache_bytes=400)
    macs = [MacAddress(i) for i in range(10)]
    for mac in macs:
        store.put(mac, {"mac": str(mac), "pad": "x" * 40})
    store.put(MAC_A, {"big": "y" * 500})  # larger than a quarter of the cache: never cached
    for _ in range(2):
        for mac in macs:
            assert store.get_raw(mac).data == encode_document({"mac": str(mac), "pad": "x" * 40})
        assert store.get_raw(MAC_A).data == encode_document({"big": "y" * 500})


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1:{port}/configs",
        "http://127.0.0.1:{port}/configs",
        "zip://configs.json::ftp://127.0.0.1:{port}/a.zip",
        "gs://bucket/configs",
        "SFTP://127.0.0.1:{port}/configs",
        "nosuchprotocol://bucket/configs",
    ],
)
def test_unsupported_scheme_is_refused_before_any_connection(url: str) -> None:
    # A listening socket that records whether anything connected to it.
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        url = url.format(port=server.getsockname()[1])
        with pytest.raises(UnsupportedStoreError) as info:
            open_store(url)
        with pytest.raises(TimeoutError):
            server.accept()
    assert info.value.code == "UNSUPPORTED_STORE"
    scheme = url.split(":", 1)[0].lower()
    assert info.value.details["scheme"] == scheme
    for supported in ("file://", "memory://", "s3://"):
        assert supported in info.value.message


@pytest.mark.parametrize("url", ["", "  "])
def test_empty_store_url_is_refused(url: str) -> None:
    with pytest.raises(UnsupportedStoreError, match="empty"):
        open_store(url)


def test_a_registered_backend_makes_a_scheme_supported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(store_module, "BACKENDS", dict(store_module.BACKENDS))
    register_backend("data", lambda _url, _options: PosixBackend(str(tmp_path)))
    store = open_store("data://anything")
    store.put(MAC_A, {"a": 1})
    assert (tmp_path / MAC_A.file_name).exists()


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("/srv/fleet", "/srv/fleet"),
        ("/srv/fleet/", "/srv/fleet"),
        ("fleet", os.path.join(os.getcwd(), "fleet")),
        ("file:///srv/fleet", "/srv/fleet"),
        ("FILE:///srv/fleet", "/srv/fleet"),
        ("local:///srv/fleet", "/srv/fleet"),
        ("file://fleet", os.path.join(os.getcwd(), "fleet")),
        ("memory://fleet", None),
        ("s3://bucket/fleet", None),
        ("ftp://host/fleet", None),
    ],
)
def test_local_store_root(url: str, root: str | None) -> None:
    assert local_store_root(url) == root


def test_missing_directory_names_itself_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "there"
    with pytest.raises(StoreMissingError) as info:
        open_store(str(missing)).list()
    assert info.value.message == (
        f"store file://{missing} does not exist; create it with --create-store"
    )
    assert info.value.details == {"store": f"file://{missing}"}
    assert not missing.exists()  # opening and failing created nothing


def _records(root: Path) -> list[Path]:
    history = root / ".history"
    return sorted(p for p in history.rglob("*") if p.is_file()) if history.exists() else []


def test_a_failed_record_fsync_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records' fsyncs run beside the config's; one failing stops the swap, and cleans up."""
    store = open_store(str(tmp_path))
    first = store.put(MAC_A, {"deviceName": "before"})
    records_before = _records(tmp_path)
    real_fsync = os.fsync

    def failing_for_records(fd: int) -> None:
        if "/.history/" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(5, "Input/output error")  # EIO, as a failing disk reports it
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_for_records)
    with pytest.raises(StoreUnavailableError):
        store.put(MAC_A, {"deviceName": "after"})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert store.get(MAC_A).etag == first.etag
    assert _records(tmp_path) == records_before  # the new record was removed again
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # so was the temp file
    assert [v.etag for v in store.history(MAC_A)] == [first.etag]
    assert store.put(MAC_A, {"deviceName": "after"}).etag in {v.etag for v in store.history(MAC_A)}


def test_recorded_writes_work_in_a_forked_child(tmp_path: Path) -> None:
    """The fsync pool's threads stay in the parent; a forked worker gets a pool of its own."""
    store = open_store(str(tmp_path))
    store.put(MAC_A, {"deviceName": "parent"})  # the parent's pool has threads now
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its recorded write completed
        try:
            signal.alarm(20)  # a hang would be a deadlock on the parent's pool: fail, not hang
            child = open_store(str(tmp_path))
            child.put(MAC_B, {"deviceName": "child"})
            store.put(MAC_A, {"deviceName": "child"})
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get(MAC_A).content["deviceName"] == "child"
    assert [v.source for v in store.history(MAC_B)] == ["library"]
    assert len(store.history(MAC_A)) == 2
