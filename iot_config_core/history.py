"""Per-device version history: who changed what, kept in the store itself, bounded per device.

Decisions (docs/history.md says the same for admins):

- **Where.** Beside the configs, as hidden objects of the backend: ``.history/<mac>/<record>``
  under the root (a hidden directory on POSIX and CephFS, a key prefix on S3, paths in memory).
  Every backend's scan skips dot-names, so records are never listed as configs and never served
  to devices; every replica, the CLI and the library see the same history.
- **One record per version**, named ``<stamp>-<etag>-<previous>-<nonce>``: the stamp orders
  records (nanoseconds, and always past the newest record the writer listed, so clock skew between
  replicas cannot reorder one device's records), ``etag`` is the version written (``none`` for a
  delete) and ``previous`` the version it replaced. The record holds one JSON line of metadata
  (when, author, source, request id) and then the exact stored bytes.
- **Crash-safe, exactly once.** A writer records the version durably *before* its conditional swap
  and removes the record again when the swap loses a race. Compare-and-swap makes the acknowledged
  writes a chain: each replaced exactly the version its record names as ``previous``. So history is
  the chain walked back from the newest record of the current version through ``previous`` links;
  a record off the chain (a lost race not yet cleaned up, a writer killed between record and swap)
  was never acknowledged and is not shown. After a SIGKILL at any point, the current config is the
  head of its history, or (if it was changed outside the store) shown as an ``external`` version.
  One case cannot be told apart: a hand edit that restores the exact bytes of a recorded version
  makes that record the head again, and the versions recorded after it drop out of the history.
- **Changes made outside the store** (a hand edit, a file copied in) have no record: the current
  version is then shown as source ``external``, and the next write through the store records it
  before replacing it, so the chain continues through it.
- **Bounded.** ``limit`` versions per device (default 20; 0 turns recording off). A writer prunes
  after its swap, from the listing it already made: chain versions past the limit and records older
  than the oldest kept one. A few records of slack (a quarter of the limit) let S3 prune in batches.
  A delete is a version too (``deleted``): a deleted config keeps its history and can be restored.
- **Who.** `attributed` sets the author, source (``api``, ``cli``, ``library``) and request id for
  the writes made inside it (a context variable: per thread and per task); outside it, a write is
  by the OS user through ``library``.
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import json
import logging
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import jsonpatch

from .backend import Backend, Blob
from .document import compute_etag
from .mac import MacAddress

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "SOURCES",
    "Attribution",
    "History",
    "PendingRecord",
    "Version",
    "attributed",
    "current_attribution",
    "json_patch",
    "os_user",
]

log = logging.getLogger(__name__)

DEFAULT_HISTORY_LIMIT: Final = 20
HISTORY_DIR: Final = ".history"
#: How a version came to be: through the REST API, the CLI, the library, or outside the store.
SOURCES: Final = ("api", "cli", "library", "external")
_NONE: Final = "none"  # the etag field of a delete record, the previous field of a create


@attrs.frozen
class Attribution:
    """Who makes the writes in a context, and through what."""

    author: str | None
    source: str = "library"
    request_id: str | None = None


_ATTRIBUTION: contextvars.ContextVar[Attribution | None] = contextvars.ContextVar(
    "iot_config_attribution", default=None
)


def os_user() -> str | None:
    """Who runs this process (the author of CLI and library changes), if the OS can tell."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return None


def current_attribution() -> Attribution:
    """The attribution `attributed` set, else the OS user through the library."""
    return _ATTRIBUTION.get() or Attribution(os_user(), "library")


@contextlib.contextmanager
def attributed(
    author: str | None, source: str = "library", request_id: str | None = None
) -> Iterator[Attribution]:
    """Attribute the store writes made inside the ``with`` block to ``author`` via ``source``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    attribution = Attribution(author, source, request_id)
    token = _ATTRIBUTION.set(attribution)
    try:
        yield attribution
    finally:
        _ATTRIBUTION.reset(token)


@attrs.frozen
class Version:
    """One version of one device's config as its history shows it.

    ``etag`` is ``None`` for a delete; ``previous`` is the version it replaced (``None``: none).
    """

    mac_address: MacAddress
    etag: str | None
    previous: str | None
    saved_at: datetime | None
    size: int
    author: str | None
    source: str
    request_id: str | None

    @property
    def deleted(self) -> bool:
        """Whether this version is the config's deletion."""
        return self.etag is None


@attrs.frozen(order=True)
class _Name:
    """A record's name, parsed: everything the chain walk and pruning need, without a read."""

    stamp: int
    etag: str | None = attrs.field(order=False)
    previous: str | None = attrs.field(order=False)
    name: str

    @classmethod
    def parse(cls, name: str) -> _Name | None:
        parts = name.split("-")
        if len(parts) != 4 or not parts[0].isdigit():
            return None  # not ours: left alone, never shown
        etag, previous = (None if part == _NONE else part for part in parts[1:3])
        return cls(int(parts[0]), etag, previous, name)

    @classmethod
    def make(cls, stamp: int, etag: str | None, previous: str | None) -> _Name:
        name = f"{stamp:020d}-{etag or _NONE}-{previous or _NONE}-{secrets.token_hex(4)}"
        return cls(stamp, etag, previous, name)


@attrs.frozen
class PendingRecord:
    """A version recorded before its swap: `History.commit` or `History.abandon` it after."""

    mac: MacAddress
    name: _Name
    listed: tuple[_Name, ...]


def _chain(names: Sequence[_Name], current: str | None) -> tuple[list[_Name], bool]:
    """The acknowledged records, newest first, and whether the current version has no record.

    ``names`` sorted oldest first. The head is the newest record of the current version (a delete
    record when the config is absent); from it, each step goes to the newest older record of the
    ``previous`` version. Records off that chain were never acknowledged: a writer lost its race
    (and is removing its record) or was killed between record and swap.

    Without a record of the current version, it was changed outside the store, and the walk
    starts from the newest record that does not name the current version as its ``previous``
    (those are attempts on top of it that never swapped). An absent config without a delete
    record was deleted outside the store only if some record other than a create attempt exists.
    """
    head = _newest(names, len(names), current)
    external = False
    if head is None:
        for index in range(len(names) - 1, -1, -1):
            if names[index].previous != current:
                head = index
                break
        external = current is not None or head is not None
    chain: list[_Name] = []
    while head is not None:
        record = names[head]
        chain.append(record)
        head = _newest(names, head, record.previous)
    return chain, external


def _newest(names: Sequence[_Name], before: int, etag: str | None) -> int | None:
    for index in range(before - 1, -1, -1):
        if names[index].etag == etag:
            return index
    return None


def _encode(meta: Mapping[str, Any], data: bytes) -> bytes:
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + data


def _decode(raw: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, data = raw.partition(b"\n")
    meta = json.loads(head)
    return (meta if isinstance(meta, dict) else {}), data


def json_patch(old: Any, new: Any) -> list[dict[str, Any]]:
    """The RFC 6902 JSON Patch that turns ``old`` into ``new`` (``jsonpatch`` computes it)."""
    operations: list[dict[str, Any]] = jsonpatch.make_patch(old, new).patch
    return operations


class History:
    """The version records of every device in one backend, bounded to ``limit`` per device."""

    def __init__(self, backend: Backend, limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        if limit < 0:
            raise ValueError("the history limit must be 0 (off) or more")
        self._backend = backend
        self.limit = limit
        # A quarter of the limit in extra records lets pruning remove several at once.
        self._slack = limit // 4

    @property
    def enabled(self) -> bool:
        """Whether writes are recorded (a limit of 0 turns history off)."""
        return self.limit > 0

    @staticmethod
    def _directory(mac: MacAddress) -> str:
        return f"{HISTORY_DIR}/{mac}"

    def _path(self, mac: MacAddress, name: str) -> str:
        return f"{self._directory(mac)}/{name}"

    def _names(self, mac: MacAddress) -> list[_Name]:
        parsed = (_Name.parse(n) for n in self._backend.list_hidden(self._directory(mac)))
        return sorted(n for n in parsed if n is not None)

    # -- the write path -------------------------------------------------------------------------

    def begin(self, mac: MacAddress, data: bytes | None, current: Blob | None) -> PendingRecord:
        """Durably record that ``data`` (``None``: a delete) is about to replace ``current``.

        Called after the preconditions held on ``current`` and before the conditional swap.
        A current version with no record (changed outside the store) is recorded first as
        ``external``, so the chain runs through it.
        """
        listed = self._names(mac)
        stamp = max(time.time_ns(), listed[-1].stamp + 1 if listed else 0)
        previous = None if current is None else compute_etag(current.data)
        chain, external = _chain(listed, previous)
        if external:
            before = _Name.make(stamp, previous, chain[0].etag if chain else None)
            saved = None if current is None else current.entry.modified
            meta = self._meta(previous, before.previous, Attribution(None, "external"), saved)
            data_before = b"" if current is None else current.data
            self._backend.put_hidden(self._path(mac, before.name), _encode(meta, data_before))
            listed.append(before)
            stamp += 1
        etag = None if data is None else compute_etag(data)
        record = _Name.make(stamp, etag, previous)
        meta = self._meta(etag, previous, current_attribution(), datetime.now(UTC))
        self._backend.put_hidden(self._path(mac, record.name), _encode(meta, data or b""))
        return PendingRecord(mac, record, tuple(listed))

    @staticmethod
    def _meta(
        etag: str | None, previous: str | None, who: Attribution, saved_at: datetime | None
    ) -> dict[str, Any]:
        return {
            "etag": etag,
            "previous": previous,
            "saved_at": None if saved_at is None else saved_at.isoformat(),
            "author": who.author,
            "source": who.source,
            "request_id": who.request_id,
        }

    def abandon(self, pending: PendingRecord) -> None:
        """Remove the record of a write that did not happen (a lost race, a failed swap)."""
        try:
            self._backend.remove_hidden([self._path(pending.mac, pending.name.name)])
        except Exception as exc:  # an orphan record is never shown; pruning ends it
            log.warning("could not remove unused history record of %s: %s", pending.mac, exc)

    def commit(self, pending: PendingRecord) -> None:
        """The swap happened: prune the device's records to the limit (best effort)."""
        names = [*pending.listed, pending.name]
        if len(names) <= self.limit + self._slack:
            return
        chain, _ = _chain(names, pending.name.etag)
        keep = chain[: self.limit]
        oldest_kept = keep[-1]
        kept = {n.name for n in keep}
        doomed = [
            self._path(pending.mac, n.name) for n in names if n < oldest_kept and n.name not in kept
        ]
        doomed += [self._path(pending.mac, n.name) for n in chain[self.limit :]]
        if not doomed:
            return
        try:
            self._backend.remove_hidden(sorted(set(doomed)))
        except Exception as exc:  # the write is acknowledged; the next one prunes
            log.warning("could not prune the history of %s: %s", pending.mac, exc)

    # -- the read path --------------------------------------------------------------------------

    def versions(self, mac: MacAddress, current: Blob | None) -> list[Version]:
        """The history of ``mac`` newest first, given its current stored version (off: none)."""
        if not self.enabled:
            return []
        return [version for version, _ in self._walk(mac, current, with_data=False)]

    def find(
        self, mac: MacAddress, etag: str, current: Blob | None
    ) -> tuple[Version, bytes] | None:
        """The version ``etag`` of ``mac`` in its history and its bytes, or ``None``."""
        if not self.enabled:
            return None
        for version, data in self._walk(mac, current, with_data=True, etag=etag):
            if version.etag == etag:
                return version, data
        return None

    def _walk(
        self, mac: MacAddress, current: Blob | None, *, with_data: bool, etag: str | None = None
    ) -> Iterator[tuple[Version, bytes]]:
        current_etag = None if current is None else compute_etag(current.data)
        chain, external = _chain(self._names(mac), current_etag)
        # Histories written with a higher limit are shown up to the limit in force.
        room = max(self.limit - external, 0)
        if external:
            yield (
                Version(
                    mac,
                    current_etag,
                    chain[0].etag if chain else None,
                    None if current is None else current.entry.modified,
                    0 if current is None else current.size,
                    None,
                    "external",
                    None,
                ),
                b"" if current is None else current.data,
            )
        for name in chain[:room]:
            if etag is not None and name.etag != etag:
                continue
            raw = self._backend.read_hidden(self._path(mac, name.name))
            if raw is None:  # pruned by another writer since the listing
                continue
            try:
                meta, data = _decode(raw)
            except ValueError as exc:
                log.warning("skipping unreadable history record %s of %s: %s", name.name, mac, exc)
                continue
            yield self._version(mac, name, meta, len(data)), data if with_data else b""

    @staticmethod
    def _version(mac: MacAddress, name: _Name, meta: Mapping[str, Any], size: int) -> Version:
        saved = meta.get("saved_at")
        source = meta.get("source")
        return Version(
            mac,
            name.etag,
            name.previous,
            datetime.fromisoformat(saved) if isinstance(saved, str) else None,
            size,
            _text(meta.get("author")),
            source if source in SOURCES else "external",
            _text(meta.get("request_id")),
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
