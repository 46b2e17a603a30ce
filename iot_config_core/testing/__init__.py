"""Test support shipped with the library: the store contract suite, its state machine, strategies.

- `iot_config_core.testing.strategies`: Hypothesis strategies (MAC spellings, JSON values) and
  sample values;
- `iot_config_core.testing.contract`: `StoreContract`, the contract every `ConfigStore` backend
  must honour, as a reusable pytest suite;
- `iot_config_core.testing.stateful`: `StoreModelMachine`, which checks a store against a dict.

One suite proves memory, local disk, CephFS and S3 alike (the habit of Kinto's
``storage/testing.py``): a backend's test module subclasses `StoreContract`, says how to make a
fresh store and how to touch its files behind the store's back, and inherits every test.

This package needs the ``test`` extra (``pip install 'iot-config[test]'``: pytest and hypothesis);
the library itself never imports it.

Running the contract against your own `iot_config_core.Backend`::

    import pytest
    from iot_config_core import ConfigStore, open_store, register_backend
    from iot_config_core.testing import StoreContract

    register_backend("myfs", lambda url, options: MyBackend(url, **options))

    class TestMyStore(StoreContract):
        @pytest.fixture(autouse=True)
        def _server(self, tmp_path):
            self.base = start_or_point_at_my_server(tmp_path)  # anything the hooks need

        def make_store(self) -> ConfigStore:
            return open_store(f"myfs://bucket/{uuid.uuid4().hex}", create=True)

        def make_missing_store(self) -> ConfigStore:  # optional: skipped when not overridden
            return open_store(f"myfs://bucket/{uuid.uuid4().hex}-never-created")

        def make_second_client(self, store) -> ConfigStore:  # optional: another process/mount
            return open_store(store_url_of(store))

        def write_raw(self, store, name, data): ...  # put bytes at <root>/<name>, bypassing store
        def remove_raw(self, store, name): ...  # delete <root>/<name>, bypassing the store
        def list_raw(self, store) -> list[str]: ...  # every file name in the root, hidden too

``make_store`` may be called several times in one test (the stateful test calls it once per
example), and each call must give an empty root of its own that already exists. Tune
``stateful_settings``, ``race_threads`` or ``counter_increments`` on the subclass for slow backends.
"""

from __future__ import annotations

from .contract import PosixStoreContract, StoreContract, cas_increment
from .stateful import StoreModelMachine
from .strategies import (
    JSON_SCALARS,
    MAC_A,
    MAC_B,
    MAC_C,
    etag_of,
    json_objects,
    json_values,
    mac_addresses,
    mac_spellings,
    nest_depth,
    small_contents,
    spelled_macs,
)

__all__ = [
    "JSON_SCALARS",
    "MAC_A",
    "MAC_B",
    "MAC_C",
    "PosixStoreContract",
    "StoreContract",
    "StoreModelMachine",
    "cas_increment",
    "etag_of",
    "json_objects",
    "json_values",
    "mac_addresses",
    "mac_spellings",
    "nest_depth",
    "small_contents",
    "spelled_macs",
]
