"""An in-memory backend on fsspec's ``MemoryFileSystem``, with the guarantees of the disk one.

``MemoryFileSystem`` alone is not safe for concurrent use (an opened file is visible empty, writers
overwrite each other, and every instance shares one class-level dict). So each store gets a private
filesystem, writes replace whole values under a lock, and a per-name generation counter gives
version tokens that change on every write.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Hashable, Sequence
from datetime import datetime
from typing import Any

from fsspec.implementations.memory import MemoryFileSystem

from .backend import ANY, Absent, AnyVersion, Backend, Blob, Entry, VersionConflict

__all__ = ["MemoryBackend"]


def _private_filesystem() -> MemoryFileSystem:
    """A ``MemoryFileSystem`` whose contents no other instance in the process shares."""
    fs = MemoryFileSystem(skip_instance_cache=True)
    fs.store = {}
    fs.pseudo_dirs = [""]
    return fs


class MemoryBackend(Backend):
    """Configs as values in a private ``MemoryFileSystem`` directory, for tests and embedded use.

    The root is not created here: `open_store` creates it for a ``memory://`` URL, and a backend
    built by hand can show how the store treats a missing root.
    """

    def __init__(self, root: str = "/") -> None:
        self._fs = _private_filesystem()
        # fsspec's public path normaliser
        self.root = self._fs._strip_protocol(root).rstrip("/") or "/"  # noqa: SLF001
        self._lock = threading.RLock()  # re-entered by current_version inside a write
        self._generation: dict[str, int] = {}
        self._counter = itertools.count(1)

    @property
    def description(self) -> str:
        return f"memory://{self.root}"

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _token(self, name: str, file: Any) -> Hashable:
        # A file put into the filesystem behind our back keeps our generation but is a new object.
        # The token holds the object itself, not id(file): a cached token then keeps it alive, so
        # its id cannot be reused by a later file (which made a stale cache entry look current).
        return (self._generation.get(name, 0), file, file.size)

    def _entry(self, name: str) -> Entry | None:
        file = self._fs.store.get(self._path(name))
        if file is None:
            return None
        modified: datetime | None = getattr(file, "modified", None) or getattr(
            file, "created", None
        )
        return Entry(self._token(name, file), modified)

    def scan(self) -> list[tuple[str, Hashable]]:
        with self._lock:
            if not self._root_exists():
                raise FileNotFoundError(self.root)
            names = [
                info["name"].rsplit("/", 1)[-1]
                for info in self._fs.ls(self.root, detail=True)
                if info["type"] == "file"
            ]
            files = self._fs.store
            return [
                (n, self._token(n, file))
                for n in names
                if not n.startswith(".") and (file := files.get(self._path(n))) is not None
            ]

    def scan_hidden(self, prefix: str) -> list[str]:
        with self._lock:
            if not self._root_exists():
                raise FileNotFoundError(self.root)
            names = (
                info["name"].rsplit("/", 1)[-1] for info in self._fs.ls(self.root, detail=True)
            )
            return [n for n in names if n.startswith(prefix)]

    def stat(self, name: str) -> Entry | None:
        with self._lock:
            return self._entry(name)

    def read(self, name: str, limit: int) -> Blob | None:
        with self._lock:
            entry = self._entry(name)
            if entry is None:
                return None
            data = self._fs.cat_file(self._path(name), 0, limit + 1)
            return Blob(data, entry, self._fs.store[self._path(name)].size)

    def replace(self, name: str, data: bytes, expected: Hashable | Absent | AnyVersion) -> Entry:
        with self._lock:
            if not self._root_exists():
                raise FileNotFoundError(self.root)
            if expected is not ANY and self.current_version(name) != expected:
                raise VersionConflict(name)
            self._fs.pipe_file(self._path(name), bytes(data))
            self._generation[name] = next(self._counter)
            entry = self._entry(name)
            assert entry is not None
            return entry

    def remove(self, name: str, expected: Hashable) -> None:
        with self._lock:
            if self.current_version(name) != expected:
                raise VersionConflict(name)
            self._fs.rm_file(self._path(name))
            self._generation[name] = next(self._counter)

    def _root_exists(self) -> bool:
        return bool(self._fs.isdir(self.root))

    def root_exists(self) -> bool:
        with self._lock:
            return self._root_exists()

    def create_root(self) -> None:
        with self._lock:
            self._fs.makedirs(self.root, exist_ok=True)

    def probe(self) -> None:
        with self._lock:
            if not self._root_exists():
                raise FileNotFoundError(self.root)
            path = self._path(".health-probe")
            self._fs.pipe_file(path, b"ok\n")
            self._fs.rm_file(path)

    def put_hidden(self, path: str, data: bytes) -> None:
        with self._lock:
            if not self._root_exists():
                raise FileNotFoundError(self.root)
            self._fs.pipe_file(self._path(path), bytes(data))

    def list_hidden(self, directory: str) -> list[str]:
        prefix = self._path(directory) + "/"
        with self._lock:
            return [
                key[len(prefix) :]
                for key in self._fs.store
                if key.startswith(prefix) and "/" not in key[len(prefix) :]
            ]

    def read_hidden(self, path: str) -> bytes | None:
        with self._lock:
            file = self._fs.store.get(self._path(path))
            return None if file is None else bytes(file.getvalue())

    def remove_hidden(self, paths: Sequence[str]) -> None:
        with self._lock:
            for path in paths:
                self._fs.store.pop(self._path(path), None)
