"""The few storage primitives a `ConfigStore` needs, and the types they speak.

A backend stores opaque bytes under flat names in one root and offers exactly one hard primitive:
an atomic *conditional* replace or remove, checked against a version token it handed out earlier.
Everything else (ETags, preconditions, validation, caching, listing) is built once on top, in
`iot_config_core.store`. Beside the configs a backend keeps *hidden* objects (paths whose first
component starts with a dot, e.g. ``.history/<mac>/<record>``): never scanned, never served, used
by `iot_config_core.history` for per-device version records. Backends raise `OSError` (or their
client's errors) for I/O failures and `VersionConflict` when the condition does not hold; the
store turns both into typed errors.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Final

import attrs

__all__ = [
    "ABSENT",
    "ANY",
    "Absent",
    "AnyVersion",
    "Backend",
    "Blob",
    "ChangeScanner",
    "Entry",
    "VersionConflict",
    "WatchedScan",
]


class Absent:
    """The expected version of a name that must not exist yet (a create)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = Absent()


class AnyVersion:
    """The expected version of an unconditional write: whatever is stored, or nothing."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = AnyVersion()


class VersionConflict(Exception):  # noqa: N818 - a signal between store and backend
    """The stored version was not the expected one when a conditional write was attempted."""


@attrs.frozen
class Entry:
    """One version of one stored object, as a stat, read or write sees it.

    ``token`` identifies the version cheaply (inode/size/mtime on POSIX, the object ETag on S3):
    two reads with equal tokens saw the same bytes.
    """

    token: Hashable
    modified: datetime | None


@attrs.frozen
class Blob:
    """The first bytes of one stored object, its whole size, and the version they were read at.

    ``data`` holds at most the ``limit + 1`` bytes the reader asked for, so an oversized file is
    recognised without being loaded whole; ``size`` is the stored object's real size.
    """

    data: bytes
    entry: Entry
    size: int


class WatchedScan(abc.ABC):
    """One consumer's scans of a backend, told which names changed since its own last scan.

    A listing that keeps summaries of every object asks `changes` first and re-checks only the
    names it gets; `scan` (a full scan) only when `changes` cannot tell. One per consumer: what
    "since the last scan" means is that consumer's own scans, so nobody else's scan resets it.
    """

    @abc.abstractmethod
    def scan(self) -> list[tuple[str, Hashable]]:
        """Everything, as `Backend.scan` gives it; later `changes` are relative to this scan."""

    @abc.abstractmethod
    def changes(self) -> dict[str, Hashable | None] | None:
        """The current token of each name that may have changed since the last scan or changes.

        ``None`` as a token: the name is gone (or not a regular object). ``None`` instead of the
        mapping: this cannot be told now, call `scan`. A name's change that completed before
        this call started is always in the answer (or the answer is ``None``).
        """


class Backend(abc.ABC):
    """What a store needs from storage. Names are always ``<canonical-mac>.json``.

    Subclasses implement the abstract primitives; `version`, `current_version` and
    `etags_are_tokens` have defaults built on them that a backend overrides only for speed.
    """

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Where the data lives, for logs and errors (never contains credentials)."""

    @abc.abstractmethod
    def scan(self) -> list[tuple[str, Hashable]]:
        """``(name, token)`` of every stored object whose name does not start with a dot.

        Each name appears once. Only the token, not an `Entry`: a warm listing compares tokens
        and reads (getting the full `Entry` with the `Blob`) only the names whose token changed,
        so building datetimes for thousands of unchanged files would be wasted.
        Tokens must equal those `stat`, `version` and `read` give for the same version.
        """

    def watched_scan(self) -> WatchedScan | None:
        """A `WatchedScan` for one consumer, where this backend can tell changes cheaply.

        ``None`` (the default) where only a full `scan` can tell what changed.
        """
        return None

    @abc.abstractmethod
    def scan_hidden(self, prefix: str) -> list[str]:
        """Names of stored objects that start with ``prefix``, a dot prefix `scan` never lists.

        The store keeps its own objects (schemas) beside the configs under such names.
        """

    @abc.abstractmethod
    def stat(self, name: str) -> Entry | None:
        """The current version of ``name``, or ``None`` when absent."""

    def version(self, name: str) -> Hashable | None:
        """Just the current version token of ``name`` (``None`` when absent): the cheapest check.

        The device hot path calls this on every poll; override it when a token is cheaper to get
        than a whole `Entry`.
        """
        entry = self.stat(name)
        return None if entry is None else entry.token

    def current_version(self, name: str) -> Hashable | Absent:
        """The token a conditional write compares ``expected`` with: `ABSENT` when absent."""
        token = self.version(name)
        return ABSENT if token is None else token

    @abc.abstractmethod
    def read(self, name: str, limit: int) -> Blob | None:
        """The bytes of ``name`` (at most ``limit + 1``), or ``None`` when absent."""

    @property
    def etags_are_tokens(self) -> bool:
        """Whether our ETag of a version is also its token (object stores' MD5 ETags).

        Then a precondition on an ETag can go to the backend as it is, in one request.
        """
        return False

    @abc.abstractmethod
    def replace(self, name: str, data: bytes, expected: Hashable | Absent | AnyVersion) -> Entry:
        """Atomically store ``data`` if the current version is ``expected`` (`ANY`: any).

        Readers see the old or the new bytes, never a mix; a crash leaves one of them.
        Raises `VersionConflict` when the current version is not ``expected``.
        """

    @abc.abstractmethod
    def remove(self, name: str, expected: Hashable) -> None:
        """Atomically delete ``name`` if its current version is ``expected``."""

    @abc.abstractmethod
    def root_exists(self) -> bool:
        """Whether the root is there (a vanished root is an outage, not an empty fleet)."""

    @abc.abstractmethod
    def create_root(self) -> None:
        """Create the root; the store never does this implicitly."""

    @abc.abstractmethod
    def probe(self) -> None:
        """Prove the root is readable and writable, leaving nothing behind."""

    # -- hidden objects (version history) ------------------------------------------------------

    @abc.abstractmethod
    def put_hidden(self, path: str, data: bytes) -> None:
        """Durably store ``data`` at the hidden ``path`` (``.dir/…/name``, a name never reused).

        Once this returns, the record must survive any crash that the next durable `replace`
        survives: the history writes a record before (or alongside) the swap it describes.
        """

    @abc.abstractmethod
    def list_hidden(self, directory: str) -> list[str]:
        """The names (not paths) of the objects directly in the hidden ``directory``.

        ``[]`` when the directory does not exist; temp files of unfinished writes are not named.
        """

    @abc.abstractmethod
    def read_hidden(self, path: str) -> bytes | None:
        """The whole object at the hidden ``path``, or ``None`` when absent."""

    @abc.abstractmethod
    def remove_hidden(self, paths: Sequence[str]) -> None:
        """Delete the hidden ``paths``; ones already gone are fine (pruning may race)."""

    # -- recorded writes: the history's records with the config, in one step ------------------

    def read_and_list_hidden(
        self, name: str, limit: int, directory: str
    ) -> tuple[Blob | None, list[str]]:
        """`read` ``name`` and `list_hidden` ``directory``; a backend may do both at once."""
        return self.read(name, limit), self.list_hidden(directory)

    def record_and_replace(
        self,
        records: Sequence[tuple[str, bytes]],
        name: str,
        data: bytes,
        expected: Hashable | Absent | AnyVersion,
    ) -> Entry:
        """`put_hidden` each ``(path, bytes)`` of ``records``, then `replace`.

        Here the records are durable before the swap. A backend may instead send them alongside
        the swap (S3) if it returns only when all have completed and raises when any failed.
        """
        for path, raw in records:
            self.put_hidden(path, raw)
        return self.replace(name, data, expected)

    def record_and_remove(
        self, records: Sequence[tuple[str, bytes]], name: str, expected: Hashable
    ) -> None:
        """`put_hidden` each of ``records``, then `remove` (as `record_and_replace`)."""
        for path, raw in records:
            self.put_hidden(path, raw)
        self.remove(name, expected)


#: What `ChangeScanner.since_last_call` yields: ``(None, every object once)`` after a full scan,
#: else ``(changes, changes' items)``, the names that may have changed and their tokens.
ScanAnswer = tuple[Mapping[str, Hashable | None] | None, Sequence[tuple[str, Hashable | None]]]


class ChangeScanner:
    """One consumer's answer to "what changed since my last call": its own watch, or a scan.

    The watch (`Backend.watched_scan`, made on first use when ``watch`` is on) is this
    consumer's alone, so nobody else's call drains it. When the consumer fails to apply an
    answer (its block raises), the watch is dropped, so the next answer is a full scan and no
    change is lost with the failed one. One call at a time: the caller serialises them.
    """

    def __init__(self, backend: Backend, *, watch: bool) -> None:
        self._backend = backend
        self._watch = watch
        self._watched: WatchedScan | None = None

    @contextlib.contextmanager
    def since_last_call(self) -> Iterator[ScanAnswer]:
        """The changes since the last call, or a full scan; apply them inside the block."""
        if self._watch and self._watched is None:
            self._watched = self._backend.watched_scan()
        watched = self._watched
        changes = None if watched is None else watched.changes()
        try:
            if changes is None:
                yield None, (self._backend.scan() if watched is None else watched.scan())
            else:
                yield changes, tuple(changes.items())
        except BaseException:
            self._watched = None
            raise
