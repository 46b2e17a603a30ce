"""iot_config_core: device configs for ESP32 fleets, keyed by MAC address.

The library behind the ``iot-config`` server and CLI, usable on its own::

    from iot_config_core import open_store

    store = open_store("/srv/iot-configs")
    config = store.get("AA:BB:CC:DD:EE:FF")
    store.put(config.mac_address, {**config.content, "enableOTA": True}, if_match=config.etag)
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .backend import Backend, WatchedScan
from .changes import Change, ChangeFeed, watch
from .document import DocumentLimits, compute_etag, decode_document, encode_document
from .errors import (
    AlreadyExistsError,
    ConfigError,
    CorruptDocumentError,
    DocumentTooLargeError,
    ErrorCode,
    InvalidDocumentError,
    InvalidETagError,
    InvalidMacError,
    InvalidPatchError,
    InvalidQueryError,
    InvalidSchemaError,
    NotFoundError,
    PatchConflictError,
    PreconditionFailedError,
    SchemaViolationError,
    StoredDocumentTooLargeError,
    StoreMissingError,
    StoreUnavailableError,
    UnsupportedStoreError,
    VersionNotFoundError,
)
from .etags import EntityTag, ETagCondition
from .history import Attribution, Version, attributed
from .mac import MacAddress
from .model import ConfigSummary, RawDocument, StoredConfig
from .patching import JsonPatch, MergePatch, Patch, PatchResult, merge_patch, patch_from_json
from .query import ListQuery, Page
from .schemas import (
    ConfigViolation,
    Problem,
    SchemaReport,
    SchemaStore,
    StoredSchema,
    Validation,
)
from .store import (
    ConfigStore,
    ETagListing,
    Listing,
    local_store_root,
    open_store,
    register_backend,
    store_scheme,
)

try:
    #: The installed distribution's version: pyproject.toml is its one source.
    __version__ = _metadata.version("iot-config")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AlreadyExistsError",
    "Attribution",
    "Backend",
    "Change",
    "ChangeFeed",
    "ConfigError",
    "ConfigStore",
    "ConfigSummary",
    "ConfigViolation",
    "CorruptDocumentError",
    "DocumentLimits",
    "DocumentTooLargeError",
    "ETagCondition",
    "ETagListing",
    "EntityTag",
    "ErrorCode",
    "InvalidDocumentError",
    "InvalidETagError",
    "InvalidMacError",
    "InvalidPatchError",
    "InvalidQueryError",
    "InvalidSchemaError",
    "JsonPatch",
    "ListQuery",
    "Listing",
    "MacAddress",
    "MergePatch",
    "NotFoundError",
    "Page",
    "Patch",
    "PatchConflictError",
    "PatchResult",
    "PreconditionFailedError",
    "Problem",
    "RawDocument",
    "SchemaReport",
    "SchemaStore",
    "SchemaViolationError",
    "StoreMissingError",
    "StoreUnavailableError",
    "StoredConfig",
    "StoredDocumentTooLargeError",
    "StoredSchema",
    "UnsupportedStoreError",
    "Validation",
    "Version",
    "VersionNotFoundError",
    "WatchedScan",
    "__version__",
    "attributed",
    "compute_etag",
    "decode_document",
    "encode_document",
    "local_store_root",
    "merge_patch",
    "open_store",
    "patch_from_json",
    "register_backend",
    "store_scheme",
    "watch",
]
