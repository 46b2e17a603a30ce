"""The store contract on a real local directory, plus what is specific to POSIX files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from iot_config_core import ConfigStore, open_store
from iot_config_core.testing import StoreContract


def root_of(store: ConfigStore) -> Path:
    assert store.description.startswith("file://")
    return Path(store.description.removeprefix("file://"))


class TestLocalStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _base(self, tmp_path: Path) -> None:
        self.base = tmp_path

    def make_store(self) -> ConfigStore:
        return open_store(tempfile.mkdtemp(dir=self.base))

    def make_missing_store(self) -> ConfigStore:
        return open_store(os.path.join(tempfile.mkdtemp(dir=self.base), "not", "there"))

    def make_second_client(self, store: ConfigStore) -> ConfigStore:
        return open_store(f"file://{root_of(store)}")

    def write_raw(self, store: ConfigStore, name: str, data: bytes) -> None:
        (root_of(store) / name).write_bytes(data)  # in place, the way an editor or `cp` does

    def remove_raw(self, store: ConfigStore, name: str) -> None:
        (root_of(store) / name).unlink()

    def list_raw(self, store: ConfigStore) -> list[str]:
        return [p.name for p in root_of(store).iterdir() if not p.is_dir()]
