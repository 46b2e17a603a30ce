"""A real backend with added latency: models a congested CephFS/NFS mount or a distant bucket.

Not a mock: every call goes to the wrapped backend (a `PosixBackend` on a real directory) after the
delay, so data, versions and errors are real; only the timing changes.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence

from iot_config_core.backend import Absent, AnyVersion, Backend, Blob, Entry


class SlowBackend(Backend):
    """Delegates every `Backend` call to ``inner`` after sleeping ``delay`` seconds."""

    def __init__(self, inner: Backend, delay: float) -> None:
        self._inner = inner
        self.delay = delay

    @property
    def description(self) -> str:
        return f"slow({self.delay}s):{self._inner.description}"

    def _wait(self) -> None:
        time.sleep(self.delay)

    def scan(self) -> list[tuple[str, Hashable]]:
        self._wait()
        return self._inner.scan()

    def scan_hidden(self, prefix: str) -> list[str]:
        self._wait()
        return self._inner.scan_hidden(prefix)

    def stat(self, name: str) -> Entry | None:
        self._wait()
        return self._inner.stat(name)

    def version(self, name: str) -> Hashable | None:
        self._wait()
        return self._inner.version(name)

    @property
    def etags_are_tokens(self) -> bool:
        return self._inner.etags_are_tokens

    def read(self, name: str, limit: int) -> Blob | None:
        self._wait()
        return self._inner.read(name, limit)

    def replace(self, name: str, data: bytes, expected: Hashable | Absent | AnyVersion) -> Entry:
        self._wait()
        return self._inner.replace(name, data, expected)

    def remove(self, name: str, expected: Hashable) -> None:
        self._wait()
        self._inner.remove(name, expected)

    def root_exists(self) -> bool:
        self._wait()
        return self._inner.root_exists()

    def create_root(self) -> None:
        self._inner.create_root()

    def probe(self) -> None:
        self._wait()
        self._inner.probe()

    def put_hidden(self, path: str, data: bytes) -> None:
        self._wait()
        self._inner.put_hidden(path, data)

    def list_hidden(self, directory: str) -> list[str]:
        self._wait()
        return self._inner.list_hidden(directory)

    def read_hidden(self, path: str) -> bytes | None:
        self._wait()
        return self._inner.read_hidden(path)

    def remove_hidden(self, paths: Sequence[str]) -> None:
        self._wait()
        self._inner.remove_hidden(paths)
