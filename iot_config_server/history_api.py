"""The REST shapes of a config's history: the version list, the rollback request, and their parse.

Kept apart from the config shapes (`iot_config_core.wire`), which the old service's clients were
generated from and which do not change.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import attrs

from iot_config_core import MacAddress, Version

from .api_models import api_converter
from .http_errors import ApiError, ApiErrorCode

__all__ = [
    "HistoryWire",
    "RollbackRequest",
    "VersionWire",
    "history_to_wire",
    "parse_rollback_request",
]


@attrs.frozen
class VersionWire:
    """One version of a config: ``etag`` is null and ``deleted`` true for a deletion."""

    etag: str | None
    #: The version this one replaced (null: the config did not exist before).
    previous: str | None
    #: When it was saved (for a change made outside the store: the file's modification time).
    saved_at: datetime | None
    size: int
    #: The admin token's name, the OS user of the CLI or library, or null (unnamed token, outside).
    author: str | None
    source: Literal["api", "cli", "library", "external"]
    request_id: str | None
    deleted: bool


@attrs.frozen
class HistoryWire:
    """The answer of ``GET /api/configs/<mac>/history``: versions newest first."""

    mac_address: MacAddress
    versions: list[VersionWire]
    count: int
    #: How many versions the store keeps per device (0: history is off).
    limit: int


@attrs.frozen
class RollbackRequest:
    """The body of ``POST /api/configs/<mac>/rollback``: the version to write again."""

    etag: str


def history_to_wire(mac: MacAddress, versions: list[Version], limit: int) -> dict[str, Any]:
    """The history answer of ``mac``."""
    wire = HistoryWire(
        mac,
        [
            VersionWire(
                v.etag,
                v.previous,
                v.saved_at,
                v.size,
                v.author,
                v.source,  # type: ignore[arg-type]  # one of SOURCES, checked when read
                v.request_id,
                v.deleted,
            )
            for v in versions
        ],
        len(versions),
        limit,
    )
    result: dict[str, Any] = api_converter.unstructure(wire)
    return result


def parse_rollback_request(data: bytes) -> RollbackRequest:
    """The rollback body, or a 400 saying what is wrong with it."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(ApiErrorCode.INVALID_BODY, f"the body is not JSON ({exc})") from None
    etag = value.get("etag") if isinstance(value, dict) else None
    if not isinstance(etag, str) or not etag.strip():
        raise ApiError(
            ApiErrorCode.INVALID_BODY, 'the body must be a JSON object {"etag": "<version>"}'
        )
    return RollbackRequest(etag.strip())
