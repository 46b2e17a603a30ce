"""Per-device version history: who changed what, kept in the store itself, bounded per device.

Decisions (docs/history.md says the same for admins):

- **Where.** Beside the configs, as hidden objects of the backend: ``.history/<mac>/<record>``
  under the root (a hidden directory on POSIX and CephFS, a key prefix on S3, paths in memory).
  Every backend's scan skips dot-names, so records are never listed as configs and never served
  to devices; every replica, the CLI and the library see the same history.
- **One record per version**, named ``<stamp>-<etag>-<previous>-<nonce>``: the stamp orders
  records (nanoseconds, and always past the newest record the writer listed or wrote itself, so
  clock skew between replicas cannot reorder one device's records), ``etag`` is the version
  written (``none`` for a delete) and ``previous`` the version it replaced. The record holds one
  JSON line of metadata (when, author, source, request id) and then the exact stored bytes.
- **Crash-safe, exactly once.** A writer's record goes with its conditional swap, and a swap that
  loses a race has its record removed again. Compare-and-swap makes the acknowledged writes a
  chain: each replaced exactly the version its record names as ``previous``. So history is the
  chain walked back from the newest record of the current version through ``previous`` links; a
  record off the chain (a lost race not yet cleaned up, a writer killed before its swap) was never
  acknowledged and is not shown. Where the record is written depends on the backend
  (`Backend.record_and_replace`): POSIX, CephFS and memory write it durably *before* the swap,
  so the current config always has its record; S3 sends it *alongside* the swap (one round trip
  instead of two) and acknowledges the write only when both completed. A writer killed between
  its swap and its record there leaves an unacknowledged current version without a record: it is
  shown as ``external`` with its bytes, and the next write records it as such (a record that
  lands later is off the chain). The same window shows when another writer reads the new
  version before its record landed: it records that version as ``external`` (so it appears once,
  without its author). So after a SIGKILL at any point, the current config is the head
  of its history, shown as ``external`` if no record of it exists, or the write was not
  acknowledged. One case cannot be told apart: a hand edit that restores the exact bytes of a
  recorded version makes that record the head again, and the versions recorded after it drop
  out of the history.
- **Requests.** A first write of a device reads the current version and lists its records (at
  once where the backend can), to know what it replaces and whether that has a record. Then the
  writer remembers what it wrote (`KNOWN_DEVICES` devices, least recently used out): its next
  write of that device checks the preconditions on it and swaps against its version token
  without a read or a listing. If anyone else wrote in between, that swap fails, its record is
  removed, and the writer reads and lists after all. On S3 a recorded write is then the record's
  PUT and the config's PUT, sent together.
- **Changes made outside the store** (a hand edit, a file copied in) have no record: the current
  version is then shown as source ``external``, and the next write through the store records it
  before replacing it, so the chain continues through it.
- **Bounded.** ``limit`` versions per device (default 20; 0 turns recording off). Once a
  device's records pass the limit by a quarter of it (the slack), its writer hands the device to
  a pruner thread and returns: pruning is off the write path. The pruner removes chain versions
  past the limit and records older than the oldest kept one, counted back from the write that
  handed it the device, in one batch (one DeleteObjects on S3), from that write's listing or,
  when it wrote from what it remembered, from a listing of its own. Records of later writes are
  newer than that write's, so they are never removed, and the acknowledged versions within the
  last ``limit`` that are older are among those it keeps. A device is queued at most once; at
  interpreter exit the pending prunes get a few seconds (`EXIT_WAIT_SECONDS`), and if the process
  dies first, the next write over the limit, by any process, prunes again.
  A delete is a version too (``deleted``): a deleted config keeps its history and can be restored.
- **Who.** `attributed` sets the author, source (``api``, ``cli``, ``library``) and request id for
  the writes made inside it (a context variable: per thread and per task); outside it, a write is
  by the OS user through ``library``.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import getpass
import itertools
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import jsonpatch

from .backend import Backend, Blob, Entry
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
#: How many devices' last writes a `History` remembers to record the next write without a read.
KNOWN_DEVICES: Final = 4096
#: How long an idle pruner thread waits for more work before it ends (the next prune starts one).
PRUNER_IDLE_SECONDS: Final = 2.0
#: How long interpreter exit waits for pending prunes, so a CLI write still prunes.
EXIT_WAIT_SECONDS: Final = 5.0
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


@functools.cache
def os_user() -> str | None:
    """Who runs this process (the author of CLI and library changes), if the OS can tell.

    Looked up once: a passwd lookup costs about as much as the rest of a write's Python.
    """
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


@attrs.frozen
class _Name:
    """A record's name, parsed: everything the chain walk and pruning need, without a read."""

    stamp: int
    etag: str | None
    previous: str | None
    name: str

    def __lt__(self, other: _Name) -> bool:
        # Written out: attrs' generated ordering builds two tuples per comparison, a measurable
        # share of a write when a device's records are sorted (first writes and pruning).
        return (self.stamp, self.name) < (other.stamp, other.name)

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
class _Tally:
    """How many records a device has as far as this process knows: when to prune, never what.

    ``epoch`` names the listing the count started from, ``writes`` how many writes this process
    made since, each from what it remembered. A prune lowers ``records`` and keeps the other two,
    so a prune of an older write can tell how many writes came after it (`History._pruned`).
    """

    records: int
    epoch: int
    writes: int = 0

    def after_write(self) -> _Tally:
        """The tally once one more write from what this process remembered is recorded."""
        return _Tally(self.records + 1, self.epoch, self.writes + 1)


@attrs.frozen
class PendingRecord:
    """The records of one write, to go with its swap: `History.commit` or `abandon` it after.

    ``records`` are ``(path, bytes)``: the version replaced when it had no record yet (an
    ``external`` one), then the new version. ``listed`` is the device's directory as the writer
    listed it, or ``None`` when the writer relied on what it knew from its own last write.
    ``tally`` is the device's record count with this write, as far as this process knows.
    """

    mac: MacAddress
    name: _Name
    records: tuple[tuple[str, bytes], ...]
    listed: tuple[_Name, ...] | None
    tally: _Tally


@attrs.frozen
class _Known:
    """What this process's last write left: enough to record the next one without a read.

    ``token`` is the backend's version token of ``etag``; the next write swaps against it, so
    if anyone else wrote since, the swap fails and the writer reads and lists after all.
    """

    etag: str
    token: Hashable
    stamp: int
    tally: _Tally


@attrs.define(eq=False)
class _ProcessState:
    """What one process keeps of a `History`: its remembered writes and its pending prunes.

    A forked child (Granian's workers, the MQTT publisher) must not inherit it: the parent's
    pruner thread does not run there, and a lock another thread held at the fork stays held in
    the child for ever. `History._state` makes a fresh one whenever the process id changed.
    """

    pid: int = attrs.field(factory=os.getpid)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: Notified when a device is queued, and when the pruner finished one or went idle.
    changed: threading.Condition = attrs.field(
        default=attrs.Factory(lambda self: threading.Condition(self.lock), takes_self=True)
    )
    known: OrderedDict[MacAddress, _Known] = attrs.field(factory=OrderedDict)
    #: The devices to prune, each at most once, with the newest write that asked for it.
    queued: OrderedDict[MacAddress, PendingRecord] = attrs.field(factory=OrderedDict)
    pruning: MacAddress | None = None
    thread: threading.Thread | None = None


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
    return _links(names, head), external


def _links(names: Sequence[_Name], head: int | None) -> list[_Name]:
    """The records from ``names[head]`` back through the ``previous`` links, newest first."""
    chain: list[_Name] = []
    while head is not None:
        record = names[head]
        chain.append(record)
        head = _newest(names, head, record.previous)
    return chain


def _newest(names: Sequence[_Name], before: int, etag: str | None) -> int | None:
    for index in range(before - 1, -1, -1):
        if names[index].etag == etag:
            return index
    return None


def _parse_all(listed: Iterable[str]) -> list[_Name]:
    """The record names among ``listed``, oldest first."""
    return sorted(n for n in (_Name.parse(name) for name in listed) if n is not None)


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
        self._epochs = itertools.count()
        self._process = _ProcessState()

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
        return _parse_all(self._backend.list_hidden(self._directory(mac)))

    def directory(self, mac: MacAddress) -> str:
        """The hidden directory of the records of ``mac`` (for `Backend.read_and_list_hidden`)."""
        return self._directory(mac)

    def _state(self) -> _ProcessState:
        """This process's state; a forked child starts afresh (the pid tells, as for watches).

        Two threads of a new child racing here each make one: the loser's remembered writes are
        forgotten (its next write reads) and its queued prune still runs on its own thread.
        """
        state = self._process
        if state.pid != os.getpid():
            state = self._process = _ProcessState()
        return state

    # -- the write path -------------------------------------------------------------------------

    def known(self, mac: MacAddress) -> _Known | None:
        """What this process's last write of ``mac`` left, if it is still remembered."""
        state = self._state()
        with state.lock:
            known = state.known.get(mac)
            if known is not None:
                state.known.move_to_end(mac)
            return known

    def forget(self, mac: MacAddress) -> None:
        """Drop what was known of ``mac`` (a swap failed, or its outcome is unknown)."""
        state = self._state()
        with state.lock:
            state.known.pop(mac, None)

    def begin(
        self, mac: MacAddress, data: bytes | None, current: Blob | None, listed: Sequence[str]
    ) -> PendingRecord:
        """The records of ``data`` (``None``: a delete) replacing ``current``, given the listing.

        Called after the preconditions held on ``current``. A current version with no record
        (changed outside the store) is recorded too, as ``external``, so the chain runs through it.
        """
        names = _parse_all(listed)
        stamp = max(time.time_ns(), names[-1].stamp + 1 if names else 0)
        previous = None if current is None else compute_etag(current.data)
        chain, external = _chain(names, previous)
        records: list[tuple[str, bytes]] = []
        if external:
            before = _Name.make(stamp, previous, chain[0].etag if chain else None)
            saved = None if current is None else current.entry.modified
            meta = self._meta(previous, before.previous, Attribution(None, "external"), saved)
            data_before = b"" if current is None else current.data
            records.append((self._path(mac, before.name), _encode(meta, data_before)))
            names.append(before)
            stamp += 1
        record, raw = self._record(stamp, data, previous)
        records.append((self._path(mac, record.name), raw))
        tally = _Tally(len(names) + 1, next(self._epochs))
        return PendingRecord(mac, record, tuple(records), tuple(names), tally)

    def begin_known(self, mac: MacAddress, data: bytes | None, known: _Known) -> PendingRecord:
        """The record of ``data`` replacing the version this process wrote last (no listing)."""
        stamp = max(time.time_ns(), known.stamp + 1)
        record, raw = self._record(stamp, data, known.etag)
        path = self._path(mac, record.name)
        return PendingRecord(mac, record, ((path, raw),), None, known.tally.after_write())

    def _record(self, stamp: int, data: bytes | None, previous: str | None) -> tuple[_Name, bytes]:
        etag = None if data is None else compute_etag(data)
        name = _Name.make(stamp, etag, previous)
        meta = self._meta(etag, previous, current_attribution(), datetime.now(UTC))
        return name, _encode(meta, data or b"")

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
        """Remove the record of a write that did not happen (a lost race, a failed swap).

        An ``external`` record written with it stays: that version was current.
        """
        self.forget(pending.mac)
        try:
            self._backend.remove_hidden([self._path(pending.mac, pending.name.name)])
        except Exception as exc:  # an orphan record is never shown; pruning ends it
            log.warning("could not remove unused history record of %s: %s", pending.mac, exc)

    def commit(self, pending: PendingRecord, written: Entry | None) -> None:
        """The swap happened: remember it for the next write, and queue a prune if it is due.

        ``written`` is the new version (``None`` for a delete).
        Pruning waits until the records pass the limit by the slack, so a writer that knows
        its count lists the directory only then, and removes a batch at once. It runs on the
        pruner thread: the write returns without waiting for it.
        """
        mac, name = pending.mac, pending.name
        state = self._state()
        with state.lock:
            tally = pending.tally
            began = state.known.get(mac)
            if pending.listed is None and began is not None and began.tally.epoch == tally.epoch:
                tally = began.tally.after_write()  # with what a prune removed since it began
            if written is None or name.etag is None:
                state.known.pop(mac, None)
            else:
                state.known[mac] = _Known(name.etag, written.token, name.stamp, tally)
                state.known.move_to_end(mac)
                while len(state.known) > KNOWN_DEVICES:
                    state.known.popitem(last=False)
            if tally.records > self.limit + self._slack:
                self._queue(state, attrs.evolve(pending, tally=tally))

    # -- pruning, on the pruner thread ----------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until this process has no prune queued or running; whether that happened in time.

        ``timeout`` in seconds, ``None`` for no limit. Tests and scripts that count records call
        it; writes never need it.
        """
        state = self._state()
        with state.lock:
            return state.changed.wait_for(
                lambda: not state.queued and state.pruning is None, timeout
            )

    def _queue(self, state: _ProcessState, pending: PendingRecord) -> None:
        """Hand ``mac`` to the pruner, starting it if it is not running (``state.lock`` held).

        A device already queued keeps its place and takes the newer write, which prunes from a
        newer head; one being pruned is queued again, to run only if still due (`_next`).
        """
        state.queued[pending.mac] = pending
        if state.thread is not None:
            state.changed.notify_all()
            return
        thread = threading.Thread(
            target=self._prune_queued, args=(state,), name="iot-config-history-pruner", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # the interpreter is shutting down: the next write prunes
            state.queued.clear()
            state.changed.notify_all()
            log.warning("could not start pruning the history: %s", exc)
            return
        state.thread = thread
        _PRUNED.add(self)

    def _prune_queued(self, state: _ProcessState) -> None:
        """The pruner thread: prune the queued devices, end after a while with none queued."""
        try:
            while True:
                with state.lock:
                    pending = self._next(state)
                    if pending is None:
                        state.thread = None  # under the lock: a later `_queue` starts another
                        return
                    state.pruning = pending.mac
                left = self._prune(pending)
                with state.lock:
                    if left is not None:
                        self._pruned(state, pending, left)
                    state.pruning = None
                    state.changed.notify_all()
        except BaseException:  # never expected (`_prune` logs its failures): do not wedge `flush`
            with state.lock:
                state.thread = None
                state.pruning = None
                state.changed.notify_all()
            raise

    def _next(self, state: _ProcessState) -> PendingRecord | None:
        """The next device still due for pruning, waiting for one a while (``state.lock`` held).

        A device whose remembered count a prune since brought back under the limit and slack is
        skipped; one not remembered (deleted, or forgotten) is pruned, as its write asked.
        """
        while True:
            while state.queued:
                mac, pending = state.queued.popitem(last=False)
                known = state.known.get(mac)
                if known is None or known.tally.records > self.limit + self._slack:
                    return pending
            state.changed.notify_all()  # a `flush` may wait for the queue to empty
            if not state.changed.wait_for(lambda: state.queued, PRUNER_IDLE_SECONDS):
                return None

    def _pruned(self, state: _ProcessState, pending: PendingRecord, left: int) -> None:
        """Lower the remembered count of ``pending.mac`` after its prune (``state.lock`` held).

        ``left`` is how many records up to ``pending``'s own the prune's listing had, less those
        it removed. A remembered write of the same epoch counts from the same listing, and the
        writes this process made since ``pending`` each added one record, newer than it: the
        count is now ``left`` plus those writes (each `commit` counts on from the count as it
        then is, so a write in flight during this keeps it). Newer records of other writers
        are not counted: one that lost its race removes its record, and one that won makes this
        process's next write fail its swap, then read and list (a new epoch). A remembered
        write of another epoch counted from a later listing, with or without the removed
        records: it is left alone, too high at worst, which only brings the next prune forward.
        """
        known = state.known.get(pending.mac)
        if known is not None and known.tally.epoch == pending.tally.epoch:
            writes_since = known.tally.writes - pending.tally.writes
            tally = attrs.evolve(known.tally, records=left + writes_since)
            state.known[pending.mac] = attrs.evolve(known, tally=tally)

    def _prune(self, pending: PendingRecord) -> int | None:
        """Remove chain versions past the limit and records older than the oldest kept one.

        The chain is walked back from ``pending``'s own record: writes acknowledged after it
        have newer records (their stamps pass the ones they replaced), which this never
        removes, and the acknowledged versions within the last ``limit`` that are older are the
        first of this chain, all kept. Returns how many records up to ``pending``'s the listing
        had, less those removed; ``None`` if pruning failed (logged: the writes are acknowledged,
        and the count, still over the limit, makes the next write prune again).
        """
        mac = pending.mac
        try:
            listed = self._names(mac) if pending.listed is None else list(pending.listed)
            names = sorted({*listed, pending.name})
            head = names.index(pending.name)
            chain = _links(names, head)
            keep = chain[: self.limit]
            oldest_kept = keep[-1]
            kept = {n.name for n in keep}
            doomed = {n for n in names if n < oldest_kept and n.name not in kept}
            doomed.update(chain[self.limit :])
            if doomed:
                self._backend.remove_hidden(sorted(self._path(mac, n.name) for n in doomed))
        except Exception as exc:
            log.warning("could not prune the history of %s: %s", mac, exc)
            return None
        return head + 1 - len(doomed)

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


#: Every `History` that started a pruner thread in this process (weakly: stores come and go).
_PRUNED: weakref.WeakSet[History] = weakref.WeakSet()


@atexit.register
def _prune_before_exit() -> None:
    """Give pending prunes `EXIT_WAIT_SECONDS` at exit (the pruner threads are daemons)."""
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    for history in list(_PRUNED):
        if not history.flush(max(deadline - time.monotonic(), 0.0)):
            log.warning("history pruning unfinished at exit: the next writes over the limit prune")
