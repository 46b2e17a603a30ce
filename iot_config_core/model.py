"""The values the store hands out: stored configs, their raw bytes, and list summaries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from .mac import MacAddress

__all__ = ["ConfigSummary", "RawDocument", "StoredConfig"]


def _str_or_none(content: Mapping[str, Any], key: str) -> str | None:
    value = content.get(key)
    return value if isinstance(value, str) else None


@attrs.frozen
class ConfigSummary:
    """What a fleet listing shows of one config, taken from well-known content keys.

    A key that is missing or of the wrong type is ``None``: listing never fails on content.
    ``etag``, ``size`` and ``modified`` describe the stored file for tools that show them.
    """

    mac_address: MacAddress
    device_name: str | None
    device_entity_id: str | None
    enable_ota: bool | None
    etag: str
    size: int
    modified: datetime | None

    @classmethod
    def from_content(
        cls,
        mac: MacAddress,
        content: Mapping[str, Any],
        *,
        etag: str,
        size: int,
        modified: datetime | None,
    ) -> ConfigSummary:
        """The summary of ``content``; wrong-typed well-known keys become ``None``."""
        ota = content.get("enableOTA")
        return cls(
            mac_address=mac,
            device_name=_str_or_none(content, "deviceName"),
            device_entity_id=_str_or_none(content, "deviceEntityId"),
            enable_ota=ota if isinstance(ota, bool) else None,
            etag=etag,
            size=size,
            modified=modified,
        )


@attrs.frozen
class RawDocument:
    """A stored document's exact bytes with its strong ETag: what devices are served."""

    mac_address: MacAddress
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    etag: str
    modified: datetime | None

    @property
    def size(self) -> int:
        """Length of the stored bytes."""
        return len(self.data)


@attrs.frozen
class StoredConfig:
    """A config as stored: its content (a JSON object) and the version it was read at."""

    mac_address: MacAddress
    content: Mapping[str, Any] = attrs.field(eq=True)
    etag: str
    size: int
    modified: datetime | None

    @property
    def summary(self) -> ConfigSummary:
        """What a listing shows of this config."""
        return ConfigSummary.from_content(
            self.mac_address, self.content, etag=self.etag, size=self.size, modified=self.modified
        )
