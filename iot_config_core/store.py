"""`ConfigStore`: device configs over any backend, with preconditions, validation and caching.

Every rule about what may be stored and when a write may happen lives here, once, above the
backend primitives of `iot_config_core.backend`:

- every write is a conditional replace against the version the preconditions were checked on,
  so no update is ever lost, whatever the backend and however many writers share it;
- nothing invalid is written, and a stored file that does not parse is reported, never served;
- reads are validated against a cheap version token (a stat), so unchanged documents are neither
  re-read nor re-parsed, and a change by another process or a human is seen on the next call;
- every write and delete is recorded in the device's history (`iot_config_core.history`) before
  its swap, so it can be shown, compared and rolled back.
"""

from __future__ import annotations

import bisect
import builtins
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .backend import (
    ABSENT,
    ANY,
    Absent,
    AnyVersion,
    Backend,
    Blob,
    ChangeScanner,
    Entry,
    VersionConflict,
)
from .document import (
    DocumentLimits,
    check_size,
    compute_etag,
    decode_document,
    encode_document,
)
from .errors import (
    AlreadyExistsError,
    ConfigError,
    CorruptDocumentError,
    DocumentTooLargeError,
    InvalidDocumentError,
    InvalidMacError,
    InvalidPatchError,
    NotFoundError,
    PreconditionFailedError,
    StoredDocumentTooLargeError,
    StoreMissingError,
    StoreUnavailableError,
    UnsupportedStoreError,
    VersionNotFoundError,
)
from .etags import ETagCondition
from .history import DEFAULT_HISTORY_LIMIT, History, PendingRecord, Version, json_patch
from .mac import MacAddress
from .model import ConfigSummary, RawDocument, StoredConfig
from .patching import Patch, PatchResult
from .posix_backend import PosixBackend
from .schemas import ConfigViolation, SchemaReport, SchemaStore, Validation

__all__ = [
    "BACKENDS",
    "DEFAULT_RAW_CACHE_BYTES",
    "CacheStats",
    "ConfigStore",
    "ETagListing",
    "Listing",
    "local_store_root",
    "open_store",
    "register_backend",
    "store_scheme",
]

log = logging.getLogger(__name__)

MacLike = MacAddress | str
Condition = str | ETagCondition

# A conditional write that keeps losing races to other writers gives up after this many tries
# (each loss means someone else's write landed, so the system as a whole is making progress).
MAX_WRITE_ATTEMPTS = 16
#: Memory for the documents kept for the device endpoint: a large fleet stays cheap, and the
#: documents polled most stay cached (a least-recently-used cache).
DEFAULT_RAW_CACHE_BYTES = 16 * 1024 * 1024
#: What one cached document costs besides its bytes (the document object, its ETag, time, version
#: token and the cache's links), as tracemalloc measures it: the bound is on real memory, not on
#: payload alone. docs/capacity.md has the breakdown.
RAW_CACHE_ENTRY_OVERHEAD = 512

#: Builds the backend of a store URL from the URL and the caller's storage options.
BackendFactory = Callable[[str, Mapping[str, Any]], Backend]

_LOCAL_SCHEMES = ("file", "local")
# ``scheme://`` as RFC 3986 spells a scheme, or fsspec's chained ``a::b://`` URLs (refused whole).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)(?:://|::)")


def store_scheme(url: str) -> str | None:
    """The scheme of a store URL in lower case, or ``None`` for a plain path."""
    match = _SCHEME.match(url)
    return None if match is None else match.group(1).lower()


def local_store_root(url: str) -> str | None:
    """The absolute directory of a store on local disk, or ``None`` for any other store.

    A plain path, ``file://PATH`` or ``local://PATH``; a relative path (also after ``file://``)
    is taken from the current directory.
    """
    match = _SCHEME.match(url)
    if match is None:
        return os.path.abspath(url)
    if match.group(1).lower() in _LOCAL_SCHEMES:
        return os.path.abspath(url[match.end() :] or "/")
    return None


def _posix(url: str, _options: Mapping[str, Any]) -> Backend:
    root = local_store_root(url)
    assert root is not None
    return PosixBackend(root)


# fsspec is imported by the backends that use it, when they are used: a server on local disk never
# loads it (it is a large share of a small process's memory).
def _memory(url: str, _options: Mapping[str, Any]) -> Backend:
    from .memory_backend import MemoryBackend  # noqa: PLC0415

    # Private to its store: nothing else can reach it, so there is no root to protect.
    backend = MemoryBackend(url[len("memory://") :] or "/")
    backend.create_root()
    return backend


def _s3(url: str, options: Mapping[str, Any]) -> Backend:
    try:
        import fsspec  # noqa: PLC0415

        from .s3_backend import S3Backend  # noqa: PLC0415 - optional extra, imported when used

        fs, root = fsspec.url_to_fs(url, **options)
    except ImportError as exc:
        raise UnsupportedStoreError(
            f"cannot open {url!r}: S3 support is not installed (install the 's3' extra)",
            url=url,
        ) from exc
    return S3Backend(fs, root)


#: URL scheme -> backend factory. Only backends that can do an atomic conditional write are here:
#: anything else would silently turn compare-and-swap into last-write-wins.
BACKENDS: dict[str, BackendFactory] = {
    "file": _posix,
    "local": _posix,
    "memory": _memory,
    "s3": _s3,
    "s3a": _s3,
}


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Make `open_store` accept another URL scheme (the factory returns a `Backend`)."""
    BACKENDS[scheme.lower()] = factory


def open_store(
    url: str,
    *,
    create: bool = False,
    limits: DocumentLimits = DocumentLimits(),
    device_cache_bytes: int = DEFAULT_RAW_CACHE_BYTES,
    history_limit: int = DEFAULT_HISTORY_LIMIT,
    list_watch: bool = True,
    **storage_options: Any,
) -> ConfigStore:
    """Open the store at ``url``: a path, ``file://``, ``memory://``, ``s3://bucket/prefix``.

    A scheme with no backend in `BACKENDS` is refused with `UnsupportedStoreError` before
    anything is contacted. ``create=True`` creates the root first; otherwise a missing root makes
    operations fail with `StoreMissingError`. A ``memory://`` store is private to its
    `ConfigStore` and starts empty and ready. ``device_cache_bytes`` bounds the memory of the
    documents kept for `get_raw` (0: none kept);
    ``history_limit`` versions are kept per device (0: none recorded); ``list_watch=False``
    makes every listing a full scan (see `ConfigStore`).
    """
    if not url.strip():
        raise UnsupportedStoreError("the store URL is empty: give a path or a URL", url=url)
    scheme = store_scheme(url) or "file"
    factory = BACKENDS.get(scheme)
    if factory is None:
        raise UnsupportedStoreError(
            f"cannot open {url!r}: unsupported store scheme {scheme}://; "
            f"supported: a path, {', '.join(f'{s}://' for s in sorted(BACKENDS))}",
            url=url,
            scheme=scheme,
            supported=sorted(BACKENDS),
        )
    try:
        backend = factory(url, storage_options)
    except (ValueError, OSError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise StoreUnavailableError(f"cannot open {url!r}: {exc}", url=url) from exc
    store = ConfigStore(
        backend,
        limits=limits,
        raw_cache_bytes=device_cache_bytes,
        history_limit=history_limit,
        list_watch=list_watch,
    )
    if create:
        store.create_root()
    return store


@attrs.frozen
class Listing:
    """A sorted snapshot of the fleet; ``generation`` changes whenever its contents do."""

    summaries: tuple[ConfigSummary, ...]
    generation: int
    skipped: tuple[str, ...] = ()


@attrs.frozen
class ETagListing:
    """The version of every stored config, as `ConfigStore.etags` found it.

    ``etags`` maps the MAC of each config to its ETag; ``damaged`` holds the MACs of stored
    files that do not parse or cannot be read (never in ``etags``). ``generation`` changes
    whenever either does, and ``changed`` names every MAC whose entry differs from the listing
    of generation ``since`` (the one before): a caller that saw that one looks at these only.
    """

    etags: Mapping[MacAddress, str]
    damaged: frozenset[MacAddress]
    generation: int
    since: int = 0
    changed: frozenset[MacAddress] = frozenset()


@attrs.frozen(weakref_slot=False)
class _Hashed:
    """What the ETag listing remembers about one version of one file: one per config.

    ``listed``: ``True`` when the listing lists this version, ``False`` when it is damaged,
    ``None`` when `ConfigStore.etag` hashed it and no listing has decided yet. Remembering an
    ETag per version token is sound because a token identifies the bytes (`Entry`): on local
    disk an atomic replace gives a new inode and an in-place edit a new size or modification
    time (an edit of equal size within one tick of the filesystem clock is the blind spot,
    the same one the device cache has); on S3 the token is the object's ETag; in memory it
    holds the stored object itself.
    """

    token: Hashable
    etag: str
    listed: bool | None


# A file that cannot be read: damaged, and not remembered (its next permission change, or the
# next full scan, tries again).
_UNREADABLE = _Hashed(None, "", listed=False)


@attrs.frozen(weakref_slot=False)
class _Parsed:
    """What the cache remembers about one version of one file.

    One per config for the life of the store, so it holds nothing derivable (the ETag is in the
    summary) and no weakref slot, which would add a pointer per config.
    """

    token: Hashable
    summary: ConfigSummary | None
    error: InvalidDocumentError | None


@attrs.frozen
class CacheStats:
    """The device-document cache of one store (one process): use and size."""

    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int


def _cost(doc: RawDocument) -> int:
    return doc.size + RAW_CACHE_ENTRY_OVERHEAD


def _ignore() -> None:
    return None


class _RawCache:
    """A small LRU of validated raw documents, bounded by the memory they take."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._items: OrderedDict[str, tuple[Hashable, RawDocument]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()
        self.on_hit: Callable[[], None] = _ignore
        self.on_miss: Callable[[], None] = _ignore

    def get(self, name: str, token: Hashable) -> RawDocument | None:
        """The document cached at exactly version ``token`` (counted by the caller)."""
        with self._lock:
            item = self._items.get(name)
            if item is None or item[0] != token:
                return None
            self._items.move_to_end(name)
            return item[1]

    def count(self, *, hit: bool) -> None:
        """Count one lookup: a hit answered without reading the file, a miss read it."""
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1
        (self.on_hit if hit else self.on_miss)()

    def put(self, name: str, token: Hashable, doc: RawDocument) -> None:
        if _cost(doc) > self._max // 4:
            return
        with self._lock:
            old = self._items.pop(name, None)
            if old is not None:
                self._bytes -= _cost(old[1])
            self._items[name] = (token, doc)
            self._bytes += _cost(doc)
            while self._bytes > self._max:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= _cost(evicted)

    def discard(self, name: str) -> None:
        with self._lock:
            old = self._items.pop(name, None)
            if old is not None:
                self._bytes -= _cost(old[1])

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._items), self._bytes, self._max)


class _BackendErrors:
    """The store's error boundary as a context manager (a class: it is on the device hot path)."""

    __slots__ = ("action", "store")

    def __init__(self, store: ConfigStore, action: str) -> None:
        self.store = store
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if exc is None or isinstance(exc, ConfigError | VersionConflict):
            return
        if isinstance(exc, Exception):
            if isinstance(exc, OSError) and self.store._root_is_missing():  # noqa: SLF001
                raise self.store._missing_store() from exc  # noqa: SLF001
            where = self.store.description
            raise StoreUnavailableError(
                f"store {where} unavailable during {self.action}: {exc}",
                action=self.action,
                backend=where,
            ) from exc


class ConfigStore:
    """Device configs keyed by MAC address, stored as ``<canonical-mac>.json`` under ``root``.

    Thread-safe; several processes (or hosts sharing a mount or bucket) may use one root at once.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        limits: DocumentLimits = DocumentLimits(),
        raw_cache_bytes: int = DEFAULT_RAW_CACHE_BYTES,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        list_watch: bool = True,
    ) -> None:
        """A store over ``backend``; `open_store` builds the backend from a URL.

        ``list_watch=False`` makes every listing a full scan even where the backend can watch
        for changes (`Backend.watched_scan`; see docs/capacity.md).
        """
        self.limits = limits
        self._backend = backend
        self._history = History(backend, history_limit)
        self._parsed: dict[str, _Parsed] = {}
        self._raw = _RawCache(raw_cache_bytes)
        # Concurrent listings share scans: see `listing`. Guarded by ``_list_turn``.
        self._list_turn = threading.Condition(threading.Lock())
        self._scanning = False
        self._scans_started = 0
        self._scan_listed = 0  # number of the latest scan that produced ``_listing``
        self._listing = Listing((), 0)
        self._list_changes = ChangeScanner(backend, watch=list_watch)
        self._generation = 0
        self._warned: set[tuple[str, Hashable]] = set()
        # The ETag listing (`etags`): its own scan state and cache, shared with `etag` once the
        # first `etags` call made it (``_etag_listing`` no longer ``None``).
        self._etag_turn = threading.Lock()
        self._etag_changes = ChangeScanner(backend, watch=list_watch)
        self._etag_listing: ETagListing | None = None
        self._hashed: dict[str, _Hashed] = {}
        self._unreadable: set[str] = set()  # damaged because unreadable: not in ``_hashed``
        #: The JSON Schemas kept in this store's root; every write is checked against them.
        self.schemas = SchemaStore(backend, limits, self._guard)

    @property
    def device_cache(self) -> CacheStats:
        """Use and size of the cache of validated documents that `get_raw` and `get` answer from."""
        return self._raw.stats()

    def count_device_cache(self, hit: Callable[[], None], miss: Callable[[], None]) -> None:
        """Call ``hit`` or ``miss`` on every cache lookup (a server's metrics count them)."""
        self._raw.on_hit = hit
        self._raw.on_miss = miss

    @property
    def description(self) -> str:
        """Where the configs live (no credentials), for logs."""
        return self._backend.description

    def __repr__(self) -> str:
        return f"ConfigStore({self.description!r})"

    @property
    def backend(self) -> Backend:
        """The storage under this store, for companions keeping hidden files in the same root."""
        return self._backend

    # -- error boundary -------------------------------------------------------------------------

    def _guard(self, action: str) -> _BackendErrors:
        """Turn backend failures into `StoreUnavailableError`; our own errors pass through.

        `VersionConflict` passes through too: it is a lost race that the write loops retry.
        """
        return _BackendErrors(self, action)

    def _missing(self, mac: MacAddress) -> ConfigError:
        """Not found, unless the whole root is gone: that is an outage, not an empty fleet."""
        if not self._backend.root_exists():
            return self._missing_store()
        return NotFoundError(f"no config for {mac}", mac_address=str(mac))

    def _missing_store(self) -> StoreMissingError:
        """The one error for a store whose root is not there, wherever it is noticed."""
        return StoreMissingError(
            f"store {self.description} does not exist; create it with --create-store",
            store=self.description,
        )

    def _root_is_missing(self) -> bool:
        """Whether the root is known to be gone (``False`` when that cannot be told either)."""
        try:
            return not self._backend.root_exists()
        except Exception:
            return False

    # -- reads ----------------------------------------------------------------------------------

    def _read(self, mac: MacAddress) -> Blob:
        blob = self._backend.read(mac.file_name, self.limits.max_bytes)
        if blob is None:
            raise self._missing(mac)
        return blob

    def _decode(self, mac: MacAddress, blob: Blob, etag: str) -> dict[str, Any]:
        try:
            return _decode_stored(blob, self.limits)
        except InvalidDocumentError as exc:
            error: type[CorruptDocumentError] = CorruptDocumentError
            problem = "is not a valid document"
            if isinstance(exc, DocumentTooLargeError):
                error, problem = StoredDocumentTooLargeError, "is too large to serve"
            raise error(
                f"stored config for {mac} {problem}: {exc.message}",
                mac_address=str(mac),
                etag=etag,
                **exc.details,
            ) from exc

    def get(self, mac: MacLike) -> StoredConfig:
        """The config of ``mac``; `NotFoundError` or `CorruptDocumentError` otherwise."""
        mac = _mac(mac)
        raw, content = self._fetch(mac, "get")
        assert isinstance(raw, RawDocument)
        if content is None:
            # Served from the cache: these bytes were validated at this very version, so the
            # plain C decoder gives the same value, and every caller gets its own copy.
            content = json.loads(raw.data)
        return StoredConfig(mac, content, raw.etag, raw.size, raw.modified)

    def get_raw(self, mac: MacLike) -> RawDocument:
        """The exact stored bytes of a valid config, for serving to devices.

        Costs one stat when the document is unchanged since it was last served.
        """
        doc, _ = self._fetch(_mac(mac), "get_raw")
        assert isinstance(doc, RawDocument)
        return doc

    def get_raw_unless(self, mac: MacLike, if_none_match: str) -> RawDocument | str:
        """`get_raw`, or only the current ETag when ``if_none_match`` (a header value) names it.

        A device's conditional poll. When the fleet has outgrown the document cache, the listing's
        summary of the very same version still knows the ETag, so an unchanged document costs one
        stat and no read either way. Raises `InvalidETagError` for a malformed value.
        """
        found, _ = self._fetch(_mac(mac), "get_raw", if_none_match)
        if isinstance(found, RawDocument) and _names(if_none_match, found.etag):
            return found.etag
        return found

    def _fetch(
        self, mac: MacAddress, action: str, unless: str | None = None
    ) -> tuple[RawDocument | str, dict[str, Any] | None]:
        """The validated document, from the cache when its version token is unchanged.

        With ``unless`` (an ``If-None-Match`` value) naming the current version as the listing
        knows it, just its ETag, without reading the file.
        The decoded content comes along only when the bytes had to be read and decoded anyway.
        """
        name = mac.file_name
        with self._guard(action):
            token = self._backend.version(name)
            if token is None:
                self._raw.discard(name)
                raise self._missing(mac)
            cached = self._raw.get(name, token)
            if cached is not None:
                self._raw.count(hit=True)
                return cached, None
            if unless is not None:
                parsed = self._parsed.get(name)
                if parsed is not None and parsed.token == token and parsed.summary is not None:
                    etag = parsed.summary.etag
                    if _names(unless, etag):
                        self._raw.count(hit=True)
                        return etag, None
            self._raw.count(hit=False)
            blob = self._read(mac)
        etag = compute_etag(blob.data)
        content = self._decode(mac, blob, etag)
        doc = RawDocument(mac, blob.data, etag, blob.entry.modified)
        self._raw.put(name, blob.entry.token, doc)
        return doc, content

    def etag(self, mac: MacLike) -> str | None:
        """The current ETag of ``mac``, or ``None`` when absent (valid or not).

        Once this store serves an ETag listing (`etags`), the version read is remembered there:
        the next listing that finds the file at that version neither reads nor hashes it again.
        """
        mac = _mac(mac)
        name = mac.file_name
        with self._guard("etag"):
            blob = self._backend.read(name, self.limits.max_bytes)
            if blob is None and not self._backend.root_exists():
                raise self._missing_store()
        if blob is None:
            return None
        if self._etag_listing is None:
            return compute_etag(blob.data)
        return self._hash(name, blob).etag

    def exists(self, mac: MacLike) -> bool:
        """Whether anything (valid or not) is stored for ``mac``."""
        mac = _mac(mac)
        with self._guard("exists"):
            if self._backend.version(mac.file_name) is not None:
                return True
            if not self._backend.root_exists():
                raise self._missing_store()
            return False

    # -- listing --------------------------------------------------------------------------------

    def list(self) -> list[ConfigSummary]:
        """Summaries of every valid config, sorted by MAC."""
        return list(self.listing().summaries)

    def listing(self) -> Listing:
        """The fleet listing, re-reading only files whose version changed since the last call.

        Files that are not ``<canonical-mac>.json`` and files that do not parse are skipped with a
        warning (once per version), and never break the list.

        Callers arriving while a scan runs do not queue a scan each: they wait, then share the
        one next scan, so N concurrent listings cost about two scans, not N. A caller is only
        ever answered by a scan that *started after it arrived* (so it sees every write
        acknowledged before its call); if that scan fails, the next waiter scans again itself.
        """
        with self._list_turn:
            wanted = self._scans_started + 1  # the first scan that starts after this call
            while self._scanning:
                self._list_turn.wait()
                if self._scan_listed >= wanted:
                    return self._listing
            self._scanning = True
            self._scans_started += 1
            number = self._scans_started
        listed = False
        try:
            listing = self._scan_and_list()
            listed = True
        finally:
            with self._list_turn:
                self._scanning = False
                if listed:
                    self._scan_listed = number
                self._list_turn.notify_all()
        return listing

    def _scan_and_list(self) -> Listing:
        """One scan, re-reading changed files only; one caller at a time (see `listing`).

        With a watch (`Backend.watched_scan`), only the names it reports are checked, and a full
        scan happens only when it cannot tell.
        """
        with self._guard("list"), self._list_changes.since_last_call() as (changes, scanned):
            return self._list(changes, scanned)

    def _list(
        self,
        changes: Mapping[str, Hashable | None] | None,
        scanned: Sequence[tuple[str, Hashable | None]],
    ) -> Listing:
        """Apply ``scanned``, a full scan or the ``changes``, to the cache; the listing after."""
        cache = self._parsed
        if changes is None:
            skipped: list[str] = []
        elif not changes:
            return self._listing
        else:
            skipped = [name for name in self._listing.skipped if name not in changes]
        changed = False
        cached_seen = 0  # scanned names now in the cache: fewer than it holds means deletions
        for name, token in scanned:
            if token is None:  # gone (a watch reports deletions)
                changed = cache.pop(name, None) is not None or changed
                continue
            # Only names that parsed as a MAC are ever cached, so an unchanged entry skips the
            # MAC parse: the warm listing is then a dict lookup and a token compare per file.
            parsed = cache.get(name)
            if parsed is None or parsed.token != token:
                mac = MacAddress.from_file_name(name)
                if mac is None:
                    self._warn_once(name, token, self._why_not_a_config(name))
                    skipped.append(name)
                    continue
                parsed = self._parse(mac, name, token)
                changed = True
                if parsed is None:
                    continue
            cached_seen += 1
            if parsed.error is not None:
                self._warn_once(name, token, parsed.error.message)
                skipped.append(name)
        # A full scan names each object once (`Backend.scan`): fewer than the cache holds
        # means deletions.
        if changes is None and cached_seen != len(cache):
            for gone in cache.keys() - {name for name, _ in scanned}:
                del cache[gone]
            changed = True
        if changed or tuple(skipped) != self._listing.skipped:
            self._generation += 1
            if changes is None:
                summaries = sorted(
                    (p.summary for p in cache.values() if p.summary is not None),
                    key=_mac_order,
                )
            else:
                summaries = self._resorted(changes)
            self._listing = Listing(tuple(summaries), self._generation, tuple(skipped))
        return self._listing

    def _resorted(self, names: Iterable[str]) -> builtins.list[ConfigSummary]:
        """The last listing's summaries with those of ``names`` replaced, still in MAC order.

        A few changes in a large fleet cost a bisection each instead of a sort of everything.
        """
        summaries = builtins.list(self._listing.summaries)
        for name in names:
            mac = MacAddress.from_file_name(name)
            if mac is None:
                continue
            at = bisect.bisect_left(summaries, mac.value, key=_mac_order)
            if at < len(summaries) and summaries[at].mac_address == mac:
                del summaries[at]
            parsed = self._parsed.get(name)
            if parsed is not None and parsed.summary is not None:
                summaries.insert(at, parsed.summary)
        return summaries

    def _parse(self, mac: MacAddress, name: str, token: Hashable) -> _Parsed | None:
        """Read, validate and summarise the current version of ``name``, and cache the result.

        The read's own `Entry` supplies size, time and the token cached (the file may have
        changed since the scan: then the next listing sees the token differ again).
        """
        try:
            blob = self._backend.read(name, self.limits.max_bytes)
        except OSError as exc:  # one unreadable file (permissions) must not hide the fleet
            self._warn_once(name, token, f"unreadable: {exc}")
            self._parsed.pop(name, None)
            return None
        if blob is None:  # deleted since the scan
            self._parsed.pop(name, None)
            return None
        etag = compute_etag(blob.data)
        meta = blob.entry
        try:
            content = _decode_stored(blob, self.limits)
        except InvalidDocumentError as exc:
            parsed = _Parsed(meta.token, None, exc)
        else:
            summary = ConfigSummary.from_content(
                mac, content, etag=etag, size=len(blob.data), modified=meta.modified
            )
            parsed = _Parsed(meta.token, summary, None)
        self._parsed[name] = parsed
        return parsed

    def _why_not_a_config(self, name: str) -> str:
        """Why ``name`` is not served, and the fix when it is a legacy spelling of a MAC."""
        try:
            mac = MacAddress.from_legacy_file_name(name)
        except InvalidMacError:
            return "not a <canonical-mac>.json file name"
        # Hand-copied from the old share: devices ask for the canonical name and get 404.
        root = local_store_root(self.description)
        if root is None:
            return f"devices ask for {mac.file_name}; store it under that name"
        return (
            f"devices ask for {mac.file_name}; store it under that name with "
            f"'iot-config --store {root} import {root}', then remove this file"
        )

    def _warn_once(self, name: str, token: Hashable, why: str) -> None:
        key = (name, token)
        if key not in self._warned:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned.add(key)
            log.warning("skipping %s in %s: %s", name, self.description, why)

    def count(self) -> int:
        """Number of valid configs stored now.

        One metadata scan (`listing`): files unchanged since the last listing are not re-read,
        so a metrics scrape can call it on every scrape.
        """
        return len(self.listing().summaries)

    # -- ETag listing ---------------------------------------------------------------------------

    def etags(self, vouched: Mapping[MacAddress, str] | None = None) -> ETagListing:
        """The ETag of every stored config: what a change feed needs, for less than `listing`.

        The same metadata scan as `listing` (an inotify watch where the backend has one), with
        a cache of its own, a version token and an ETag per config: a file is read only when
        its token changed since the last call (or since `etag` read it), and then hashed.

        Only a file that parses is listed: one that does not (a half-saved hand edit, one over
        the size limit, one that cannot be read) is in ``damaged``, with a warning once per
        version. So a changed file is parsed as well, except when its new ETag is the one
        ``vouched`` gives for its MAC: the caller has that version already (a change feed
        passes the versions it reported before and those its consumer read itself with `etag`:
        a publisher's own writes), so parsing could tell it nothing it has not acted on. That
        is the common case under a write load, where parsing would be most of the cost; such a
        version stays listed until the file changes.

        One call at a time. Raises `StoreUnavailableError` (or `StoreMissingError`) as `listing`
        does; the next call then scans everything again.
        """
        with (
            self._etag_turn,
            self._guard("list"),
            self._etag_changes.since_last_call() as (changes, scanned),
        ):
            return self._hash_changed(changes, scanned, vouched or {})

    def _hash_changed(
        self,
        changes: Mapping[str, Hashable | None] | None,
        scanned: Sequence[tuple[str, Hashable | None]],
        vouched: Mapping[MacAddress, str],
    ) -> ETagListing:
        """Apply ``scanned``, a full scan or the ``changes``; the ETag listing after.

        The cache is updated only together with the listing, so an entry a listing decided on
        (``listed`` not ``None``) is always what the current listing says: a full scan skips
        those whose token is unchanged without parsing their name.
        """
        previous = self._etag_listing
        if previous is None:
            previous = self._etag_listing = ETagListing({}, frozenset(), 0)
        cache, unreadable = self._hashed, self._unreadable
        if changes is not None and not changes:
            return previous
        updates: dict[str, _Hashed | None] = {}  # applied to the cache with the new listing
        found: dict[MacAddress, _Hashed | None] = {}  # None: not there
        for name, token in scanned:
            entry = cache.get(name)
            if entry is not None and entry.token == token and entry.listed is not None:
                continue
            mac = MacAddress.from_file_name(name)
            if mac is None:
                if token is not None:
                    self._warn_once(name, token, self._why_not_a_config(name))
                continue
            version = None if token is None else self._hash_version(mac, name, token, vouched)
            updates[name] = version
            found[mac] = version
        if changes is None:  # a full scan names each object once: the rest are gone
            for gone in (cache.keys() | unreadable) - {name for name, _ in scanned}:
                updates[gone] = None
                mac = MacAddress.from_file_name(gone)
                assert mac is not None  # only config names are remembered
                found[mac] = None
        for name, version in updates.items():
            unreadable.discard(name)
            if version is _UNREADABLE:
                unreadable.add(name)
            if version is None or version is _UNREADABLE:
                cache.pop(name, None)
            else:
                cache[name] = version
        return self._etag_listing_after(previous, found)

    def _hash_version(
        self, mac: MacAddress, name: str, token: Hashable, vouched: Mapping[MacAddress, str]
    ) -> _Hashed | None:
        """The current version of ``name``, hashed, and parsed unless ``vouched`` names it.

        ``None`` when it is gone.
        """
        known = self._hashed.get(name)
        if (
            known is not None
            and known.token == token
            and known.listed is None
            and vouched.get(mac) == known.etag
        ):
            return _Hashed(token, known.etag, listed=True)  # read by `etag`: not again
        try:
            blob = self._backend.read(name, self.limits.max_bytes)
        except OSError as exc:  # one unreadable file must not hide the fleet
            self._warn_once(name, token, f"unreadable: {exc}")
            return _UNREADABLE
        if blob is None:  # deleted since the scan
            return None
        etag = self._hash(name, blob).etag
        try:
            if vouched.get(mac) == etag:
                check_size(blob.size, self.limits)
            else:
                _decode_stored(blob, self.limits)
        except InvalidDocumentError as exc:
            self._warn_once(name, blob.entry.token, exc.message)
            return _Hashed(blob.entry.token, etag, listed=False)
        return _Hashed(blob.entry.token, etag, listed=True)

    def _etag_listing_after(
        self, previous: ETagListing, found: Mapping[MacAddress, _Hashed | None]
    ) -> ETagListing:
        """``previous`` with the versions ``found`` (``None``: not listed); itself if the same."""
        damaged = set(previous.damaged)
        etags = previous.etags
        changed: set[MacAddress] = set()
        for mac, version in found.items():
            etag = None if version is None or not version.listed else version.etag
            broken = version is not None and version.listed is False
            if etags.get(mac) != etag or (mac in damaged) != broken:
                changed.add(mac)
                if broken:
                    damaged.add(mac)
                else:
                    damaged.discard(mac)
        if not changed:
            return previous
        current = dict(etags)
        for mac in changed:
            version = found[mac]
            if version is not None and version.listed:
                current[mac] = version.etag
            else:
                current.pop(mac, None)
        listing = ETagListing(
            current,
            frozenset(damaged),
            previous.generation + 1,
            since=previous.generation,
            changed=frozenset(changed),
        )
        self._etag_listing = listing
        return listing

    def _hash(self, name: str, blob: Blob) -> _Hashed:
        """The ETag of ``blob``, hashed once per version and remembered for the ETag listing."""
        known = self._hashed.get(name)
        if known is not None and known.token == blob.entry.token:
            return known
        hashed = _Hashed(blob.entry.token, compute_etag(blob.data), listed=None)
        self._hashed[name] = hashed
        return hashed

    # -- writes ---------------------------------------------------------------------------------

    def put(
        self,
        mac: MacLike,
        content: Mapping[str, Any],
        *,
        if_match: Condition | None = None,
        if_none_match: Condition | None = None,
        create_only: bool = False,
        dry_run: bool = False,
    ) -> StoredConfig:
        """Store ``content`` as the config of ``mac`` and return what was stored.

        - ``if_match``: an ETag (or list, or ``*``); write only if the stored version matches,
          else `PreconditionFailedError` carrying the current ETag.
        - ``if_none_match``: write only if the stored version does *not* match (``*``: only if
          absent), else `PreconditionFailedError`.
        - ``create_only``: write only if nothing is stored, else `AlreadyExistsError`.

        Writing the bytes already stored returns the same ETag (on disk, without writing).
        ``dry_run`` checks the content and the preconditions against the stored version and
        returns what would be stored (``modified`` is ``None``), writing nothing.
        """
        mac = _mac(mac)
        match = None if if_match is None else ETagCondition.parse(if_match)
        none_match = None if if_none_match is None else ETagCondition.parse(if_none_match)
        data = encode_document(content, self.limits)
        self.schemas.check(content)
        new_etag = compute_etag(data)
        name = mac.file_name
        if dry_run:
            current_etag = self.etag(mac)
            self._check(mac, current_etag, match, none_match, create_only=create_only)
            return StoredConfig(mac, json.loads(data), new_etag, len(data), None)
        entry = None
        if not self._history.enabled:  # a recorded write must know the version it replaces
            entry = self._put_in_one_request(name, data, match, none_match, create_only=create_only)
        if entry is None:
            entry = self._put_checked(mac, data, match, none_match, create_only=create_only)
        self._raw.discard(name)
        # ``data`` was encoded from checked content: the plain decoder gives the stored value.
        return StoredConfig(mac, json.loads(data), new_etag, len(data), entry.modified)

    def _put_checked(
        self,
        mac: MacAddress,
        data: bytes,
        match: ETagCondition | None,
        none_match: ETagCondition | None,
        *,
        create_only: bool,
    ) -> Entry:
        """Read the current version, check the preconditions on it, swap only that version."""
        entry = self._put_after_own(mac, data, match, none_match, create_only=create_only)
        if entry is not None:
            return entry
        for _ in range(MAX_WRITE_ATTEMPTS):
            with self._guard("put"):
                current, listed = self._read_for_write(mac)
                if current is None and not self._backend.root_exists():
                    raise self._missing(mac)
            current_etag = None if current is None else compute_etag(current.data)
            self._check(mac, current_etag, match, none_match, create_only=create_only)
            if current is not None and current.data == data:
                return current.entry
            try:
                entry = self._swap(mac, data, current, listed, "put")
            except VersionConflict:
                continue  # another writer got in between: check again against its version
            assert entry is not None
            return entry
        raise self._contended(mac, "put")

    def _put_after_own(
        self,
        mac: MacAddress,
        data: bytes,
        match: ETagCondition | None,
        none_match: ETagCondition | None,
        *,
        create_only: bool,
    ) -> Entry | None:
        """Record and swap against the version this process wrote last, without a read.

        ``None`` when that is not known, when the preconditions or a no-op write need the
        stored version, or when the swap finds someone else wrote since: then the caller reads.
        """
        known = self._history.known(mac) if self._history.enabled else None
        if known is None or known.etag == compute_etag(data):
            return None
        try:
            self._check(mac, known.etag, match, none_match, create_only=create_only)
        except (PreconditionFailedError, AlreadyExistsError):
            return None  # decided on the stored version, not on what this process last wrote
        pending = self._history.begin_known(mac, data, known)
        try:
            return self._record_and_swap(mac, data, known.token, pending, "put")
        except VersionConflict:
            return None

    def _read_for_write(self, mac: MacAddress) -> tuple[Blob | None, builtins.list[str]]:
        """The current version and, with history on, the names in its history directory."""
        name = mac.file_name
        if not self._history.enabled:
            return self._backend.read(name, self.limits.max_bytes), []
        return self._backend.read_and_list_hidden(
            name, self.limits.max_bytes, self._history.directory(mac)
        )

    def _put_in_one_request(
        self,
        name: str,
        data: bytes,
        match: ETagCondition | None,
        none_match: ETagCondition | None,
        *,
        create_only: bool,
    ) -> Entry | None:
        """Hand a precondition the backend can check itself to it: one request, no read first.

        Every backend checks "nothing stored" (create-only, ``If-None-Match: *``). A backend whose
        tokens are our ETags (object stores) also takes "anything" (no precondition) and a single
        strong ``If-Match``; elsewhere an unconditional put reads first, so rewriting the bytes
        already stored changes nothing at all. ``None`` means "not decided here": the condition
        is not one of those, or the backend refused it; the read-check-swap loop then decides,
        and names the precise error.
        """
        etags_are_tokens = self._backend.etags_are_tokens
        expected: Hashable | Absent | AnyVersion
        if match is None and none_match is None:
            if create_only:
                expected = ABSENT
            elif etags_are_tokens:
                expected = ANY
            else:
                return None
        elif (
            none_match is None
            and not create_only
            and match is not None
            and _single_strong(match)
            and etags_are_tokens
        ):
            expected = match.tags[0].opaque
        elif match is None and none_match is not None and none_match.any:
            expected = ABSENT
        else:
            return None
        try:
            with self._guard("put"):
                return self._backend.replace(name, data, expected)
        except VersionConflict:
            return None

    def patch(
        self,
        mac: MacLike,
        patch: Patch,
        *,
        if_match: Condition | None = None,
        dry_run: bool = False,
    ) -> PatchResult:
        """Apply ``patch`` to the stored config of ``mac`` and store the result.

        Read, apply, then `put` with ``if_match`` set to the ETag that was read: when another
        writer gets in between, the patch is applied again to *its* version (bounded retries), so
        concurrent patches of different keys all land. ``if_match`` makes the whole patch
        conditional on the caller's version instead (`PreconditionFailedError` otherwise). A patch
        that leaves the content as it is writes nothing. ``dry_run`` checks everything a real
        patch would (preconditions, the result, its schema) and writes nothing.
        """
        mac = _mac(mac)
        match = None if if_match is None else ETagCondition.parse(if_match)
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = self.get(mac)
            self._check(mac, current.etag, match, None, create_only=False)
            content = patch.apply(current.content)
            if not isinstance(content, dict):
                raise InvalidPatchError(
                    "the patched config would not be a JSON object", reason="not_an_object"
                )
            if _same_json(content, current.content):
                return PatchResult(current, changed=False, dry_run=dry_run)
            try:
                stored = self.put(mac, content, if_match=current.etag, dry_run=dry_run)
            except PreconditionFailedError:
                continue  # another write landed since the read: patch that version instead
            return PatchResult(stored, changed=True, dry_run=dry_run)
        raise self._contended(mac, "patch")

    def validate(self, content: Mapping[str, Any]) -> Validation:
        """Check ``content`` against its schema (see `iot_config_core.schemas`), writing nothing."""
        return self.schemas.validate(content)

    def schema_report(self) -> SchemaReport:
        """Every stored config its schema rejects now, relaxed schemas included, by MAC.

        Configs stored before their schema (or under a relaxed one) are served all the same;
        this is how an admin finds them.
        """
        checked = 0
        found: list[ConfigViolation] = []
        for summary in self.listing().summaries:
            try:
                config = self.get(summary.mac_address)
            except (NotFoundError, CorruptDocumentError):
                continue  # deleted or damaged since the listing (damage is the listing's report)
            checked += 1
            result = self.schemas.validate(config.content)
            if result.schema is not None and result.problems:
                found.append(
                    ConfigViolation(
                        config.mac_address, result.schema, result.relaxed, result.problems
                    )
                )
        return SchemaReport(checked, tuple(found))

    def delete(self, mac: MacLike, *, if_match: Condition | None = None) -> None:
        """Delete the config of ``mac``; `NotFoundError` when absent."""
        mac = _mac(mac)
        match = None if if_match is None else ETagCondition.parse(if_match)
        name = mac.file_name
        for _ in range(MAX_WRITE_ATTEMPTS):
            with self._guard("delete"):
                current, listed = self._read_for_write(mac)
            if current is None:
                raise self._missing(mac)
            self._check(mac, compute_etag(current.data), match, None, create_only=False)
            try:
                self._swap(mac, None, current, listed, "delete")
                break
            except VersionConflict:
                continue
        else:
            raise self._contended(mac, "delete")
        self._raw.discard(name)

    def _swap(
        self,
        mac: MacAddress,
        data: bytes | None,
        current: Blob | None,
        listed: Sequence[str],
        action: str,
    ) -> Entry | None:
        """Replace ``current`` with ``data`` (``None``: remove it), recorded in the history."""
        expected = ABSENT if current is None else current.entry.token
        pending = None
        if self._history.enabled:
            pending = self._history.begin(mac, data, current, listed)
        return self._record_and_swap(mac, data, expected, pending, action)

    def _record_and_swap(
        self,
        mac: MacAddress,
        data: bytes | None,
        expected: Hashable | Absent,
        pending: PendingRecord | None,
        action: str,
    ) -> Entry | None:
        """Swap ``expected`` for ``data`` with the records of ``pending`` (see `History`).

        The backend writes the records before the swap or alongside it, and returns once all
        have completed; a swap that loses its race (`VersionConflict`) has its record removed,
        so each acknowledged write is recorded exactly once.
        """
        name = mac.file_name
        records = () if pending is None else pending.records
        try:
            with self._guard(action):
                try:
                    if data is None:
                        assert not isinstance(expected, Absent)
                        self._backend.record_and_remove(records, name, expected)
                        entry = None
                    else:
                        entry = self._backend.record_and_replace(records, name, data, expected)
                except VersionConflict:
                    if pending is not None:
                        self._history.abandon(pending)
                    raise
        except BaseException:
            self._history.forget(mac)  # whether the swap happened is not known here
            raise
        if pending is not None:
            self._history.commit(pending, entry)
        return entry

    @staticmethod
    def _check(
        mac: MacAddress,
        current: str | None,
        match: ETagCondition | None,
        none_match: ETagCondition | None,
        *,
        create_only: bool,
    ) -> None:
        """RFC 9110 order: If-Match first, then If-None-Match; then create-only."""
        if match is not None and not match.matches_strong(current):
            raise PreconditionFailedError(
                f"config for {mac} is not at the expected version"
                if current is not None
                else f"no config for {mac} to match",
                mac_address=str(mac),
                current_etag=current,
            )
        if none_match is not None and none_match.matches_weak(current):
            raise PreconditionFailedError(
                f"config for {mac} already exists"
                if none_match.any
                else f"config for {mac} is at a version excluded by if_none_match",
                mac_address=str(mac),
                current_etag=current,
            )
        if create_only and current is not None:
            raise AlreadyExistsError(
                f"config for {mac} already exists", mac_address=str(mac), current_etag=current
            )

    def _contended(self, mac: MacAddress, action: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"{action} of {mac} lost {MAX_WRITE_ATTEMPTS} races with other writers in a row",
            action=action,
            mac_address=str(mac),
        )

    # -- operations -----------------------------------------------------------------------------

    def check(self) -> None:
        """Prove the root is readable and writable (leaves nothing behind), else raise."""
        with self._guard("health check"):
            self._backend.probe()

    def create_root(self) -> None:
        """Create the root directory or prefix if it is missing."""
        with self._guard("create root"):
            self._backend.create_root()

    # -- history --------------------------------------------------------------------------------

    @property
    def history_limit(self) -> int:
        """How many versions are kept per device (0: history is off)."""
        return self._history.limit

    def wait_for_background(self, timeout: float | None = None) -> bool:
        """Wait until this store's background work in this process is done: history pruning.

        A write returns before its device's history is pruned (a thread does it); tests and
        scripts that count records call this first. ``timeout`` in seconds (``None``: no
        limit); returns whether all was done in time.
        """
        return self._history.flush(timeout)

    def _current(self, mac: MacAddress, action: str) -> Blob | None:
        with self._guard(action):
            current = self._backend.read(mac.file_name, self.limits.max_bytes)
            if current is None and not self._backend.root_exists():
                raise self._missing_store()
        return current

    def history(self, mac: MacLike) -> builtins.list[Version]:
        """The versions of ``mac``, newest first; `NotFoundError` when there is none and no config.

        A deleted config keeps its history (its newest version is the deletion). The current
        version comes first; when it was changed outside the store its source is ``external``.
        """
        mac = _mac(mac)
        current = self._current(mac, "history")
        with self._guard("history"):
            versions = self._history.versions(mac, current)
        if not versions and current is None:
            raise NotFoundError(f"no config and no history for {mac}", mac_address=str(mac))
        return versions

    def version(self, mac: MacLike, etag: str) -> StoredConfig:
        """The content of version ``etag`` of ``mac`` (quoted or not) from its history.

        `VersionNotFoundError` when no version of that ETag is in the history (a deletion has no
        content); `CorruptDocumentError` when a version recorded from outside does not parse.
        """
        mac = _mac(mac)
        wanted = etag.strip().removeprefix("W/").strip('"')
        current = self._current(mac, "get version")
        with self._guard("get version"):
            found = self._history.find(mac, wanted, current) if wanted else None
        if found is None:
            raise VersionNotFoundError(
                f"no version {wanted or etag!r} in the history of {mac}",
                mac_address=str(mac),
                etag=wanted or etag,
            )
        version, data = found
        blob = Blob(data, Entry(wanted, version.saved_at), len(data))
        content = self._decode(mac, blob, wanted)
        return StoredConfig(mac, content, wanted, len(data), version.saved_at)

    def rollback(
        self, mac: MacLike, etag: str, *, if_match: Condition | None = None
    ) -> StoredConfig:
        """Write version ``etag`` of ``mac`` again, as a new version (``if_match``: as in `put`).

        Rolling back to the current content changes nothing and records nothing.
        """
        old = self.version(mac, etag)
        return self.put(old.mac_address, old.content, if_match=if_match)

    def undelete(self, mac: MacLike) -> StoredConfig:
        """Restore the newest version a deleted config had; `AlreadyExistsError` if it exists."""
        mac = _mac(mac)
        restorable = next((v for v in self.history(mac) if not v.deleted), None)
        if restorable is None or restorable.etag is None:
            raise VersionNotFoundError(
                f"no version of {mac} to restore in its history", mac_address=str(mac)
            )
        old = self.version(mac, restorable.etag)
        return self.put(mac, old.content, create_only=True)

    def diff(self, mac: MacLike, old: str, new: str | None = None) -> builtins.list[dict[str, Any]]:
        """The RFC 6902 JSON Patch from version ``old`` to ``new`` (default: the current config)."""
        mac = _mac(mac)
        before = self.version(mac, old).content
        after = self.get(mac).content if new is None else self.version(mac, new).content
        return json_patch(before, after)


def _decode_stored(blob: Blob, limits: DocumentLimits) -> dict[str, Any]:
    """Decode stored bytes; a file over the limit is reported with its real size.

    Only ``limit + 1`` bytes were read, so the size check must use the blob's ``size``.
    """
    check_size(blob.size, limits)
    return decode_document(blob.data, limits)


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON text (Python says ``True == 1`` and ignores key order; stored bytes do not)."""
    return json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


def _names(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (weak comparison, RFC 9110)."""
    return if_none_match == f'"{etag}"' or ETagCondition.parse(if_none_match).matches_weak(etag)


def _single_strong(condition: ETagCondition) -> bool:
    return not condition.any and len(condition.tags) == 1 and not condition.tags[0].weak


def _mac_order(summary: ConfigSummary) -> int:
    return summary.mac_address.value


def _mac(mac: MacLike) -> MacAddress:
    return mac if isinstance(mac, MacAddress) else MacAddress.parse(mac)
