"""iot_config_core: device configs for ESP32 fleets, keyed by MAC address.

The library behind the ``iot-config`` server and CLI, usable on its own::

    from iot_config_core import open_store

    store = open_store("/srv/iot-configs")
    config = store.get("AA:BB:CC:DD:EE:FF")
    store.put(config.mac_address, {**config.content, "enableOTA": True}, if_match=config.etag)
"""

from __future__ import annotations

from .changes import Change, ChangeFeed, watch
from .document import DocumentLimits, compute_etag, decode_document, encode_document
from .errors import (
    AlreadyExistsError,
    ConfigError,
    CorruptDocumentError,
    DocumentTooLargeError,
    InvalidDocumentError,
    InvalidETagError,
    InvalidMacError,
    NotFoundError,
    PreconditionFailedError,
    StoreUnavailableError,
    UnsupportedStoreError,
)
from .etags import EntityTag, ETagCondition
from .mac import MacAddress
from .model import ConfigSummary, RawDocument, StoredConfig
from .store import ConfigStore, Listing, open_store, register_backend

__all__ = [
    "AlreadyExistsError",
    "Change",
    "ChangeFeed",
    "ConfigError",
    "ConfigStore",
    "ConfigSummary",
    "CorruptDocumentError",
    "DocumentLimits",
    "DocumentTooLargeError",
    "ETagCondition",
    "EntityTag",
    "InvalidDocumentError",
    "InvalidETagError",
    "InvalidMacError",
    "Listing",
    "MacAddress",
    "NotFoundError",
    "PreconditionFailedError",
    "RawDocument",
    "StoreUnavailableError",
    "StoredConfig",
    "UnsupportedStoreError",
    "compute_etag",
    "decode_document",
    "encode_document",
    "open_store",
    "register_backend",
    "watch",
]
