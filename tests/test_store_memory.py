"""The store contract on the in-memory backend, plus what is specific to it."""

from __future__ import annotations

from typing import cast

from iot_config_core import ConfigStore, open_store
from iot_config_core.memory_backend import MemoryBackend
from iot_config_core.testing import MAC_A, StoreContract


def _backend(store: ConfigStore) -> MemoryBackend:
    return cast("MemoryBackend", store._backend)


class TestMemoryStore(StoreContract):
    def make_store(self) -> ConfigStore:
        return open_store("memory://fleet")

    def make_missing_store(self) -> ConfigStore:
        # open_store creates a memory root; a backend built by hand has none yet.
        return ConfigStore(MemoryBackend("/fleet"))

    def make_second_client(self, store: ConfigStore) -> ConfigStore:
        # A memory root lives in one process: a second client shares the backend, not the caches.
        return ConfigStore(_backend(store), limits=store.limits)

    def write_raw(self, store: ConfigStore, name: str, data: bytes) -> None:
        backend = _backend(store)
        backend._fs.pipe_file(backend._path(name), data)

    def remove_raw(self, store: ConfigStore, name: str) -> None:
        backend = _backend(store)
        backend._fs.rm_file(backend._path(name))

    def list_raw(self, store: ConfigStore) -> list[str]:
        backend = _backend(store)
        return [
            info["name"].rsplit("/", 1)[-1]
            for info in backend._fs.ls(backend.root, detail=True)
            if info["type"] == "file"
        ]


def test_memory_store_is_ready_without_create() -> None:
    store = open_store("memory://anything")
    assert store.list() == []
    assert store.count() == 0
    assert not store.exists(MAC_A)
    assert store.etag(MAC_A) is None
    store.check()
    store.put(MAC_A, {"a": 1})
    assert store.get(MAC_A).content == {"a": 1}


def test_memory_stores_are_private() -> None:
    first = open_store("memory://fleet")
    second = open_store("memory://fleet", create=True)
    first.put(MAC_A, {"a": 1})
    assert second.list() == []
    assert not second.exists(MAC_A)
    assert first.description == "memory:///fleet"
    assert repr(first) == "ConfigStore('memory:///fleet')"


def test_memory_store_at_filesystem_root() -> None:
    store = open_store("memory://")
    store.put(MAC_A, {"a": 1})
    assert [s.mac_address for s in store.list()] == [MAC_A]


def test_hand_edits_never_revive_a_cached_version() -> None:
    # Without the filesystem's help an edit is only visible as a new file object; a token made
    # of id(file) made a stale cache entry look current once CPython reused the id.
    store = open_store("memory://fleet")
    backend = _backend(store)
    path = backend._path(MAC_A.file_name)
    backend._fs.pipe_file(path, b'{"v": 0}')
    for i in range(1, 300):
        cached = store.get_raw(MAC_A).data
        backend._fs.pipe_file(path, b'{"v": %d}' % (i % 10))
        backend._fs.pipe_file(path, b'{"v": %d}' % ((i + 1) % 10))
        assert store.get_raw(MAC_A).data == b'{"v": %d}' % ((i + 1) % 10), (i, cached)
