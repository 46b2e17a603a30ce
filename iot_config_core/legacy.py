"""Importing a directory of legacy ``<mac>.json`` files: the one policy every importer follows.

The old service kept one file per device in a shared directory, named by the MAC in any spelling
(``AA:BB:CC:DD:EE:FF.json``, ``aabbccddeeff.json``, ...), holding any bytes. A store serves only
``<canonical-mac>.json`` files holding valid documents, so such a directory is brought in file by
file, under these rules:

- a file is **rejected** when its name is not ``<mac>.json``, when another file names the same MAC
  (which of two spellings should win is a guess, so neither does), when it cannot be read, or when
  its content breaks the document rules. `LegacyDirectory.check` finds exactly these, with no
  store, so a clean check means an import that rejects nothing;
- a valid file is **unchanged** when the store already holds the very bytes the import would
  write, **skipped** when a different config is stored and ``overwrite`` is off (or when the
  stored config changed while the import ran), and **imported** otherwise.

Writes are conditional on the version just compared (create-only for a new config, if-match for a
replaced one), so an import never overwrites an edit made while it runs. Hidden files (editor
leftovers, a store's ``.locks/``) and subdirectories are not part of the directory.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from typing import IO, Any

import attrs

from .document import DocumentLimits, compute_etag, decode_document, encode_document
from .errors import (
    AlreadyExistsError,
    DocumentTooLargeError,
    InvalidDocumentError,
    InvalidMacError,
    PreconditionFailedError,
    SchemaViolationError,
)
from .mac import MacAddress
from .store import ConfigStore

__all__ = [
    "DUPLICATE_MAC",
    "UNREADABLE",
    "Checked",
    "FileReport",
    "LegacyDirectory",
    "Outcome",
    "read_document",
]

#: The ``code`` of a file rejected because another file names the same MAC.
DUPLICATE_MAC = "DUPLICATE_MAC"
#: The ``code`` of a file rejected because it could not be read (permissions, I/O error).
UNREADABLE = "UNREADABLE"


class Outcome(enum.StrEnum):
    """What an import did, or would do, with one file."""

    IMPORTED = "imported"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    REJECTED = "rejected"


@attrs.frozen
class FileReport:
    """The outcome for one file, with the reason (and, when rejected, the error code)."""

    file: str
    outcome: Outcome
    mac: MacAddress | None = None
    reason: str = ""
    code: str | None = None


@attrs.frozen
class Checked:
    """A file that passed every check: its MAC, its content and the bytes a store would write."""

    file: str
    mac: MacAddress
    content: dict[str, Any]
    data: bytes

    @property
    def legacy_name(self) -> bool:
        """Whether the name is a spelling a store does not serve (only an import fixes it)."""
        return self.file != self.mac.file_name


def read_document(stream: IO[bytes], limits: DocumentLimits) -> bytes:
    """The bytes of a document file or pipe, refusing one over ``limits`` before loading it whole.

    Raises `DocumentTooLargeError` with the file's real size when the stream is a file.
    """
    data = stream.read(limits.max_bytes + 1)
    if len(data) <= limits.max_bytes:
        return data
    try:
        size: int | None = os.fstat(stream.fileno()).st_size
    except (OSError, ValueError, AttributeError):  # a pipe or an in-memory stream has no size
        size = None
    shown = f" of {size} bytes" if size is not None and size > limits.max_bytes else ""
    raise DocumentTooLargeError(
        f"document{shown} exceeds the limit of {limits.max_bytes} bytes",
        reason="too_large",
        size=size,
        limit=limits.max_bytes,
    )


@attrs.frozen
class LegacyDirectory:
    """A directory of ``<mac>.json`` files to check or import; see the module docstring."""

    path: str
    names: tuple[str, ...]

    @classmethod
    def open(cls, path: str) -> LegacyDirectory:
        """The regular, non-hidden files of ``path``, sorted; `OSError` when it is unreadable."""
        with os.scandir(path) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and e.is_file()]
        return cls(path, tuple(sorted(names)))

    def _macs(self) -> tuple[dict[str, MacAddress], dict[str, FileReport]]:
        """File name -> MAC for the names that may be imported, and the rejected names."""
        macs: dict[str, MacAddress] = {}
        rejected: dict[str, FileReport] = {}
        by_mac: dict[MacAddress, list[str]] = {}
        for name in self.names:
            try:
                mac = MacAddress.from_legacy_file_name(name)
            except InvalidMacError as exc:
                rejected[name] = FileReport(name, Outcome.REJECTED, None, exc.message, exc.code)
                continue
            macs[name] = mac
            by_mac.setdefault(mac, []).append(name)
        for mac, spellings in by_mac.items():
            if len(spellings) > 1:
                for name in spellings:
                    others = ", ".join(n for n in spellings if n != name)
                    reason = f"same MAC {mac} as {others}"
                    rejected[name] = FileReport(name, Outcome.REJECTED, mac, reason, DUPLICATE_MAC)
                    del macs[name]
        return macs, rejected

    def check(self, limits: DocumentLimits) -> Iterator[Checked | FileReport]:
        """Each file, in name order: `Checked` when an import would accept it, else a rejection."""
        macs, rejected = self._macs()
        for name in self.names:
            mac = macs.get(name)
            if mac is None:
                yield rejected[name]
                continue
            try:
                with open(os.path.join(self.path, name), "rb") as stream:
                    data = read_document(stream, limits)
                content = decode_document(data, limits)
                # Stored pretty-printed: a compact document under the limit may be over it.
                encoded = encode_document(content, limits)
            except OSError as exc:
                reason = f"unreadable: {exc.strerror or exc}"
                yield FileReport(name, Outcome.REJECTED, mac, reason, UNREADABLE)
                continue
            except InvalidDocumentError as exc:
                yield FileReport(name, Outcome.REJECTED, mac, exc.message, exc.code)
                continue
            yield Checked(name, mac, content, encoded)

    def import_into(
        self, store: ConfigStore, *, overwrite: bool = False, dry_run: bool = False
    ) -> Iterator[FileReport]:
        """Import each file, in name order, yielding its outcome as soon as it is known.

        Fails before the first file when the store is unusable: a dry run needs it readable, an
        import writable. `StoreUnavailableError` may still end the import midway; the outcomes
        yielded until then stand.
        """
        if dry_run:
            store.listing()
        else:
            store.check()
        for item in self.check(store.limits):
            if isinstance(item, FileReport):
                yield item
            else:
                yield _import_one(store, item, overwrite=overwrite, dry_run=dry_run)


def _import_one(store: ConfigStore, item: Checked, *, overwrite: bool, dry_run: bool) -> FileReport:
    mac = item.mac
    current = store.etag(mac)  # of the stored bytes, valid or corrupt
    if current == compute_etag(item.data):
        return FileReport(item.file, Outcome.UNCHANGED, mac)
    if current is not None and not overwrite:
        reason = f"a different config for {mac} is stored (overwrite replaces it)"
        return FileReport(item.file, Outcome.SKIPPED, mac, reason)
    try:  # a dry run checks the preconditions and the schema as the import would
        if current is None:
            store.put(mac, item.content, create_only=True, dry_run=dry_run)
        else:
            store.put(mac, item.content, if_match=current, dry_run=dry_run)
    except (PreconditionFailedError, AlreadyExistsError):
        reason = f"the config for {mac} changed during the import; run it again to retry"
        return FileReport(item.file, Outcome.SKIPPED, mac, reason)
    except SchemaViolationError as exc:
        return FileReport(item.file, Outcome.REJECTED, mac, exc.message, exc.code)
    reason = "new config" if current is None else "replaced the stored config"
    return FileReport(item.file, Outcome.IMPORTED, mac, reason)
