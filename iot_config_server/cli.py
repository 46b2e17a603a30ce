"""The ``iot-config`` command: run the server, or work on a store directly from a shell.

Every subcommand except ``serve`` works on the store in-process through `iot_config_core` (never
over HTTP and never by shelling out), so it gets the same validation and compare-and-swap
guarantees as the server, works while no server runs, and needs no web framework installed:
``serve`` is the only subcommand that imports Bottle, and it does so only when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from iot_config_core import (
    AlreadyExistsError,
    ConfigError,
    ConfigStore,
    ConfigSummary,
    CorruptDocumentError,
    DocumentLimits,
    InvalidMacError,
    ListQuery,
    MacAddress,
    NotFoundError,
    PreconditionFailedError,
    StoreUnavailableError,
    __version__,
    decode_document,
    encode_document,
    store_scheme,
)
from iot_config_core.device_tokens import (
    DeviceKeyring,
    DeviceSecretError,
    RevocationList,
    load_keyring,
    new_secret_line,
)
from iot_config_core.fleet import FleetOutcome, FleetPatchResult, Selector, patch_fleet
from iot_config_core.history import attributed, os_user
from iot_config_core.legacy import Checked, FileReport, LegacyDirectory, Outcome, read_document
from iot_config_core.patching import JSON_PATCH, MERGE_PATCH, Patch, decode_patch
from iot_config_core.posix_backend import sync_directory, write_file_atomically
from iot_config_core.query import MAX_LIMIT
from iot_config_core.wire import summary_to_wire
from iot_config_server.history_api import history_to_wire  # no Bottle either
from iot_config_server.http_errors import ExitStatus, exit_status_for  # no Bottle either
from iot_config_server.settings import Settings, SettingsError  # plain attrs: no Bottle

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "FileError",
    "UsageError",
    "build_parser",
    "main",
]

PROG = "iot-config"
# One table decides the exit status of each error code (`http_errors.ERROR_TABLE`).
EXIT_OK = int(ExitStatus.OK)
EXIT_FAILED = int(ExitStatus.FAILED)
EXIT_USAGE = int(ExitStatus.USAGE)
EXIT_UNAVAILABLE = int(ExitStatus.UNAVAILABLE)


EXIT_STATUS_HELP = """\
exit status:
  0  success
  1  validation or precondition failure: invalid document, config not found, ETag mismatch
     (--if-match), config already exists (--create-only), corrupt stored file, import rejections
  2  usage error: bad option, bad MAC or ETag spelling, unreadable input file, export target
     that is not a directory, unsupported URL
  3  store unavailable: missing store root, I/O error (also writing export files), unreachable
     object store"""

STORE_HELP = """\
The store is --store, else $IOT_CONFIG_STORE, else $ESP32_CONFIGS_DIR, else ./iot-configs
(exactly what `iot-config serve` uses)."""


class UsageError(Exception):
    """The command line asked for something impossible (a bad value, a missing file)."""

    code = "USAGE_ERROR"


class FileError(UsageError):
    """A local file or directory the command reads or writes is not what it needs.

    Usage (exit 2) when a given path is wrong (missing, a file where a directory is expected);
    ``unavailable`` (exit 3) when writing failed underneath (a full disk, an I/O error).
    """

    code = "FILE_ERROR"

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable

    @classmethod
    def reading(cls, path: str, exc: OSError, expected: str) -> FileError:
        """An input path that could not be read, saying what was expected there."""
        if isinstance(exc, IsADirectoryError):
            return cls(f"{path}: is a directory, expected {expected}")
        if isinstance(exc, NotADirectoryError):
            return cls(f"{path}: not a directory, expected {expected}")
        return cls(f"{path}: {exc.strerror or exc}")


# -- where the store is ---------------------------------------------------------------------------


def _env_settings(environ: Mapping[str, str]) -> Settings:
    """The server's settings, so the CLI and the server agree on the store and its limits."""
    try:
        return Settings.from_env(environ)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def _store_url(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave the option out for the default)")
    return text


def _mac(text: str) -> MacAddress:
    try:
        return MacAddress.parse(text)
    except InvalidMacError as exc:  # argparse's error then comes with the subcommand's usage
        raise argparse.ArgumentTypeError(f"{exc.message} [{exc.code}]") from None


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {exc}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


@attrs.frozen
class _Context:
    """What every subcommand needs: the server's settings, with the command line's store and limit.

    Stores are opened by `Settings.open_store` but never created unasked: unlike ``serve``, no
    subcommand creates even the default ``./iot-configs``, so a command run in the wrong
    directory fails instead of answering from a new, empty fleet.
    """

    settings: Settings

    @property
    def store_url(self) -> str:
        return self.settings.store_url

    @property
    def limits(self) -> DocumentLimits:
        return self.settings.document_limits

    def open(self, *, create: bool = False) -> ConfigStore:
        if store_scheme(self.store_url) == "memory":
            _err(
                f"{PROG}: note: {self.store_url} is in this process only: nothing is kept "
                "after the command ends"
            )
        return self.settings.open_store(create=create)


# -- output helpers -------------------------------------------------------------------------------


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _write_bytes(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _describe(exc: ConfigError | UsageError) -> str:
    """One line: the message, the stored ETag where it lets a retry succeed, the stable code.

    A corrupt stored document shows its ETag too: ``put --if-match`` with it repairs the file.
    """
    if isinstance(exc, UsageError):
        return f"{exc} [{exc.code}]"
    current = None
    if isinstance(exc, PreconditionFailedError | AlreadyExistsError):
        current = exc.details.get("current_etag")
    elif isinstance(exc, CorruptDocumentError):
        current = exc.details.get("etag")
    if current is not None:
        return f"{exc.message} (current ETag {current}) [{exc.code}]"
    return f"{exc.message} [{exc.code}]"


def _cell(value: object, width: int = 40) -> str:
    """A table cell: control characters escaped (names are user data), long text shortened."""
    if value is None:
        return "-"
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _timestamp(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ota(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _summary_json(summary: ConfigSummary) -> dict[str, Any]:
    """The REST API's summary shape plus the file facts a CLI user asks for."""
    result: dict[str, Any] = summary_to_wire(summary)
    result["etag"] = summary.etag
    result["size"] = summary.size
    result["modified"] = None if summary.modified is None else summary.modified.isoformat()
    return result


class _Progress:
    """A carriage-return counter on stderr, shown only when stderr is a terminal."""

    def __init__(self, total: int, label: str) -> None:
        self._total = total
        self._label = label
        self._shown = sys.stderr.isatty() and total > 0
        self._last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self._shown and (done == self._total or now - self._last >= 0.1):
            self._last = now
            sys.stderr.write(f"\r{self._label} {done}/{self._total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# -- documents from files -------------------------------------------------------------------------


def _read_input(path: str, limits: DocumentLimits) -> bytes:
    """A document from a file or stdin (``-``), never loading an oversized one whole."""
    if path == "-":
        if sys.stdin.isatty():
            _err(f"{PROG}: reading the document from standard input (end it with Ctrl-D)")
        return read_document(sys.stdin.buffer, limits)
    try:
        with open(path, "rb") as stream:
            return read_document(stream, limits)
    except OSError as exc:
        raise FileError.reading(path, exc, "a JSON document file") from None


def _validated(data: bytes, limits: DocumentLimits) -> tuple[dict[str, Any], bytes]:
    """The content of ``data`` and the exact bytes the store would write for it.

    Both directions are checked: the store pretty-prints, so a compact document under the limit
    can still be over it once stored.
    """
    content = decode_document(data, limits)
    return content, encode_document(content, limits)


def _legacy_directory(path: str) -> LegacyDirectory:
    try:
        return LegacyDirectory.open(path)
    except OSError as exc:
        raise FileError.reading(path, exc, "a directory of <mac>.json files") from None


# -- subcommands ----------------------------------------------------------------------------------


def cmd_list(ctx: _Context, args: argparse.Namespace) -> int:
    """Print the fleet as a table, or as JSON with ``--json``."""
    query = ListQuery.from_text(
        name=args.name,
        entity_id=args.entity_id,
        enable_ota=args.enable_ota,
        cursor=args.cursor,
        limit=None if args.limit is None else str(args.limit),
    )
    listing = ctx.open().listing()
    page = query.select(listing.summaries)
    summaries = page.summaries
    if args.json:
        document: dict[str, Any] = {
            "configs": [_summary_json(s) for s in summaries],
            "count": len(summaries),
            "skipped": list(listing.skipped),
        }
        if query.limit is not None:
            document["next_cursor"] = page.next_cursor
        _out(json.dumps(document, indent=2, ensure_ascii=False))
        return EXIT_OK
    if page.next_cursor is not None:  # stderr: stdout stays the table
        _err(f"more configs follow: add --cursor {page.next_cursor}")
    header = ("MAC", "NAME", "ENTITY ID", "OTA", "SIZE", "MODIFIED (UTC)")
    rows = [
        (
            str(s.mac_address),
            _cell(s.device_name),
            _cell(s.device_entity_id),
            _ota(s.enable_ota),
            str(s.size),
            _timestamp(s.modified),
        )
        for s in summaries
    ]
    _table(header, rows, numeric=4)
    return EXIT_OK


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], numeric: int) -> None:
    """Aligned columns under ``header``; the ``numeric`` column is right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i == numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        _out("  ".join(cells).rstrip())


def cmd_get(ctx: _Context, args: argparse.Namespace) -> int:
    """Write the stored bytes of one config to stdout, exactly as devices receive them."""
    raw = ctx.open().get_raw(args.mac)
    _write_bytes(raw.data)
    if args.etag:
        _err(raw.etag)
    return EXIT_OK


def cmd_put(ctx: _Context, args: argparse.Namespace) -> int:
    """Validate a document and store it; print the new ETag."""
    mac: MacAddress = args.mac
    content, _ = _validated(_read_input(args.file, ctx.limits), ctx.limits)
    store = ctx.open(create=args.create_store)
    stored = store.put(mac, content, if_match=args.if_match, create_only=args.create_only)
    _out(stored.etag)
    return EXIT_OK


def cmd_delete(ctx: _Context, args: argparse.Namespace) -> int:
    """Delete one config, optionally only at a known version."""
    mac: MacAddress = args.mac
    ctx.open().delete(mac, if_match=args.if_match)
    _err(f"deleted {mac}")
    return EXIT_OK


def cmd_history(ctx: _Context, args: argparse.Namespace) -> int:
    """Print the versions of one config, newest first: who changed what, when, through what."""
    mac: MacAddress = args.mac
    store = ctx.open()
    versions = store.history(mac)
    if args.json:
        _out(json.dumps(history_to_wire(mac, versions, store.history_limit), indent=2))
        return EXIT_OK
    header = ("ETAG", "SAVED (UTC)", "SIZE", "AUTHOR", "SOURCE", "REQUEST ID")
    rows = [
        (
            v.etag or "(deleted)",
            _timestamp(v.saved_at),
            str(v.size),
            _cell(v.author, 24),
            v.source,
            _cell(v.request_id, 24),
        )
        for v in versions
    ]
    _table(header, rows, numeric=2)
    return EXIT_OK


def cmd_show(ctx: _Context, args: argparse.Namespace) -> int:
    """Print one version of a config from its history."""
    version = ctx.open().version(args.mac, args.etag)
    _out(json.dumps(version.content, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_diff(ctx: _Context, args: argparse.Namespace) -> int:
    """Print the RFC 6902 JSON Patch from one version to another (default: the current one)."""
    patch = ctx.open().diff(args.mac, args.old, args.new)
    _out(json.dumps(patch, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_rollback(ctx: _Context, args: argparse.Namespace) -> int:
    """Write an earlier version again as the current one; print the ETag now stored."""
    stored = ctx.open().rollback(args.mac, args.etag, if_match=args.if_match)
    _out(stored.etag)
    _err(f"{stored.mac_address} is at version {args.etag} again")
    return EXIT_OK


def cmd_undelete(ctx: _Context, args: argparse.Namespace) -> int:
    """Restore the newest version a deleted config had; print its ETag."""
    stored = ctx.open().undelete(args.mac)
    _out(stored.etag)
    _err(f"restored {stored.mac_address}")
    return EXIT_OK


@attrs.define
class _ImportReport:
    """What happened to each file of an import, in the order the files were seen."""

    dry_run: bool
    files: list[FileReport] = attrs.Factory(list)

    def named(self, outcome: Outcome) -> list[FileReport]:
        return [f for f in self.files if f.outcome is outcome]

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "imported": [f.file for f in self.named(Outcome.IMPORTED)],
            "unchanged": [f.file for f in self.named(Outcome.UNCHANGED)],
            "skipped": [{"file": f.file, "reason": f.reason} for f in self.named(Outcome.SKIPPED)],
            "rejected": [
                {"file": f.file, "reason": f.reason, "code": f.code}
                for f in self.named(Outcome.REJECTED)
            ],
        }

    def print_text(self) -> None:
        for f in self.named(Outcome.SKIPPED):
            _out(f"skipped   {f.file}: {f.reason}")
        for f in self.named(Outcome.REJECTED):
            _out(f"rejected  {f.file}: {f.reason} [{f.code}]")
        counts = {outcome: len(self.named(outcome)) for outcome in Outcome}
        verb = "would import" if self.dry_run else "imported"
        _out(
            f"{'dry run, nothing written: ' if self.dry_run else ''}{verb} "
            f"{counts[Outcome.IMPORTED]}, unchanged {counts[Outcome.UNCHANGED]}, "
            f"skipped {counts[Outcome.SKIPPED]}, rejected {counts[Outcome.REJECTED]}"
        )


def cmd_import(ctx: _Context, args: argparse.Namespace) -> int:
    """Import a directory of ``<mac>.json`` files under the library's one import policy."""
    directory = _legacy_directory(args.directory)
    store = ctx.open(create=args.create_store and not args.dry_run)
    report = _ImportReport(dry_run=args.dry_run)
    progress = _Progress(len(directory.names), "importing")
    try:
        for done, outcome in enumerate(
            directory.import_into(store, overwrite=args.overwrite, dry_run=args.dry_run), start=1
        ):
            progress.update(done)
            report.files.append(outcome)
    except StoreUnavailableError:
        progress.close()
        if report.files:
            _out("import interrupted; files before the failure were handled as reported:")
            report.print_text()
        raise
    progress.close()
    if args.json:
        _out(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        report.print_text()
    return EXIT_FAILED if report.named(Outcome.REJECTED) else EXIT_OK


def cmd_export(ctx: _Context, args: argparse.Namespace) -> int:
    """Write every valid config to ``DIR/<canonical-mac>.json``, atomically per file."""
    store = ctx.open()
    listing = store.listing()
    try:
        os.makedirs(args.directory, exist_ok=True)
    except FileExistsError:  # makedirs says "File exists" for a file in the way: say what is
        raise FileError(
            f"{args.directory}: not a directory (export writes one file per config "
            "into a directory)"
        ) from None
    except OSError as exc:
        raise FileError.reading(args.directory, exc, "a directory") from None
    written = unchanged = 0
    corrupt: list[str] = []
    progress = _Progress(len(listing.summaries), "exporting")
    for done, summary in enumerate(listing.summaries, start=1):
        progress.update(done)
        mac = summary.mac_address
        try:
            raw = store.get_raw(mac)
        except NotFoundError:  # deleted since the listing: nothing to export
            continue
        except ConfigError as exc:
            if isinstance(exc, StoreUnavailableError):
                progress.close()
                raise
            corrupt.append(f"{mac.file_name}: {_describe(exc)}")
            continue
        target = os.path.join(args.directory, mac.file_name)
        with contextlib.suppress(OSError), open(target, "rb") as existing:
            if existing.read(raw.size + 1) == raw.data:
                unchanged += 1
                continue
        try:
            write_file_atomically(args.directory, mac.file_name, raw.data, sync=False)
        except OSError as exc:
            progress.close()
            raise FileError(
                f"cannot write {target}: {exc.strerror or exc} ({written} written before it)",
                unavailable=True,
            ) from exc
        written += 1
    progress.close()
    sync_directory(args.directory)
    corrupt.extend(
        f"{name}: stored document is not valid (see the warning above)"
        for name in listing.skipped
        if MacAddress.from_file_name(name) is not None
    )
    for line in corrupt:
        _err(f"{PROG}: not exported: {line}")
    _out(
        f"exported {written + unchanged} config(s) to {args.directory} "
        f"({written} written, {unchanged} unchanged, {len(corrupt)} not exported)"
    )
    return EXIT_FAILED if corrupt else EXIT_OK


def _check_file(path: str, limits: DocumentLimits) -> FileReport | None:
    """Why a single document file would be refused (its content only), or ``None``."""
    try:
        _validated(_read_input(path, limits), limits)
    except UsageError as exc:
        return FileReport(path, Outcome.REJECTED, reason=str(exc), code=exc.code)
    except ConfigError as exc:
        return FileReport(path, Outcome.REJECTED, reason=exc.message, code=exc.code)
    return None


def cmd_validate(ctx: _Context, args: argparse.Namespace) -> int:
    """Check document files, and directories exactly as ``import`` would; needs no store.

    Without paths, check the store's configs against their schemas instead.
    """
    if not args.paths:
        return _store_report(ctx, verbose=args.verbose)
    valid = invalid = 0
    for path in args.paths:
        items: Iterable[tuple[str, Checked | FileReport | None]]
        if os.path.isdir(path):
            items = (
                (os.path.join(path, item.file), item)
                for item in _legacy_directory(path).check(ctx.limits)
            )
        elif os.path.exists(path) or path == "-":
            items = [(path, _check_file(path, ctx.limits))]
        else:
            raise FileError(f"{path}: no such file or directory")
        for shown, item in items:
            if isinstance(item, FileReport):
                invalid += 1
                _out(f"invalid  {shown}: {item.reason} [{item.code}]")
                continue
            valid += 1
            if isinstance(item, Checked) and item.legacy_name:
                # Copied into a store by hand, such a file is skipped and its device gets 404.
                _out(
                    f"legacy   {shown}: a store serves it only as {item.mac.file_name} "
                    f"(`{PROG} import` stores it under that name)"
                )
            elif args.verbose:
                _out(f"ok       {shown}")
    _out(f"{valid} valid, {invalid} invalid")
    return EXIT_FAILED if invalid else EXIT_OK


# -- partial updates and schemas ------------------------------------------------------------------


def _patch_input(args: argparse.Namespace, limits: DocumentLimits) -> Patch:
    """The patch of FILE (or stdin): its kind from --merge-patch/--json-patch, else its shape."""
    return decode_patch(_read_input(args.file, limits), limits, args.patch_type)


def _selector(args: argparse.Namespace) -> Selector:
    """The --all filters, all of which must hold (none: every device)."""
    tests: list[Callable[[ConfigSummary], bool]] = []
    if args.mac is not None:
        glob = args.mac.lower()
        tests.append(lambda s: fnmatch.fnmatchcase(str(s.mac_address), glob))
    if args.mac_regex is not None:
        mac_regex: re.Pattern[str] = args.mac_regex
        tests.append(lambda s: mac_regex.search(str(s.mac_address)) is not None)
    if args.name is not None:
        name: str = args.name
        tests.append(
            lambda s: s.device_name is not None and fnmatch.fnmatchcase(s.device_name, name)
        )
    if args.name_regex is not None:
        name_regex: re.Pattern[str] = args.name_regex
        tests.append(
            lambda s: s.device_name is not None and name_regex.search(s.device_name) is not None
        )
    if args.entity_id is not None:
        entity: str = args.entity_id
        tests.append(
            lambda s: (
                s.device_entity_id is not None and fnmatch.fnmatchcase(s.device_entity_id, entity)
            )
        )
    if args.ota is not None:
        ota = {"yes": True, "no": False, "unset": None}[args.ota]
        tests.append(lambda s: s.enable_ota is ota)
    return lambda summary: all(test(summary) for test in tests)


def _fleet_json(result: FleetPatchResult) -> dict[str, Any]:
    error = result.error
    return {
        "mac_address": str(result.summary.mac_address),
        "device_name": result.summary.device_name,
        "outcome": str(result.outcome),
        "etag": result.etag,
        "error": None if error is None else {"code": str(error.code), "message": error.message},
    }


def cmd_patch(ctx: _Context, args: argparse.Namespace) -> int:
    """Patch one config (print its new ETag), or with --all every selected one (a report)."""
    if not args.all:
        return _patch_one(ctx, args)
    if args.target is not None:
        if args.file != "-":
            raise UsageError("patch --all takes the patch FILE only: no MAC")
        args.file = args.target  # `patch --all FILE`: the only positional is the patch
    if args.if_match is not None:
        raise UsageError("--if-match names one config's version: it does not go with --all")
    patch = _patch_input(args, ctx.limits)
    store = ctx.open()
    where = _selector(args)
    # The listing is cached by version: patch_fleet's own listing re-reads nothing.
    total = sum(1 for summary in store.listing().summaries if where(summary))
    progress = _Progress(total, "dry run" if args.dry_run else "patching")
    results: list[FleetPatchResult] = []
    try:
        for result in patch_fleet(store, patch, where, dry_run=args.dry_run):
            results.append(result)
            progress.update(len(results))
    finally:
        progress.close()
    return _fleet_report(results, as_json=args.json, dry_run=args.dry_run)


def _patch_one(ctx: _Context, args: argparse.Namespace) -> int:
    if args.target is None:
        raise UsageError("patch needs a MAC address, or --all for every selected device")
    if any(
        getattr(args, f) is not None
        for f in ("mac", "mac_regex", "name", "name_regex", "entity_id", "ota")
    ):
        raise UsageError("the filters (--mac, --name, ...) select devices for --all")
    mac = _mac(args.target)
    patch = _patch_input(args, ctx.limits)
    result = ctx.open().patch(mac, patch, if_match=args.if_match, dry_run=args.dry_run)
    if args.dry_run:
        _write_bytes(encode_document(result.config.content, ctx.limits))
        _err("would change" if result.changed else "unchanged")
    else:
        _out(result.config.etag)
        if not result.changed:
            _err("unchanged: the patch leaves the config as it is")
    return EXIT_OK


def _fleet_report(results: list[FleetPatchResult], *, as_json: bool, dry_run: bool) -> int:
    counts = dict.fromkeys(FleetOutcome, 0)
    for result in results:
        counts[result.outcome] += 1
    failed = counts[FleetOutcome.FAILED]
    if as_json:
        document = {
            "dry_run": dry_run,
            "counts": {str(k): v for k, v in counts.items() if v},
            "devices": [_fleet_json(r) for r in results],
        }
        _out(json.dumps(document, indent=2, ensure_ascii=False))
        return EXIT_FAILED if failed else EXIT_OK
    for result in results:
        if result.outcome is FleetOutcome.UNCHANGED:
            continue
        name = (
            "" if result.summary.device_name is None else f"  {_cell(result.summary.device_name)}"
        )
        why = "" if result.error is None else f": {result.error.message} [{result.error.code}]"
        _out(f"{result.outcome:<17}  {result.summary.mac_address}{name}{why}")
    changed = counts[FleetOutcome.WOULD_CHANGE if dry_run else FleetOutcome.CHANGED]
    skipped = counts[FleetOutcome.GONE] + counts[FleetOutcome.NO_LONGER_MATCHES]
    verb = "would change" if dry_run else "changed"
    tail = f", skipped {skipped} (deleted or no longer matching)" if skipped else ""
    _out(f"{verb} {changed}, unchanged {counts[FleetOutcome.UNCHANGED]}, failed {failed}{tail}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_schema(ctx: _Context, args: argparse.Namespace) -> int:
    """List, print, store or delete the JSON Schemas of the store."""
    schemas = ctx.open().schemas
    if args.action == "list":
        for name in schemas.names():
            _out(name)
    elif args.action == "get":
        stored = schemas.get(args.name)
        _out(json.dumps(dict(stored.schema), indent=2, ensure_ascii=False))
        _err(f"{'relaxed' if stored.relaxed else 'enforced'}, ETag {stored.etag}")
    elif args.action == "put":
        schema = decode_document(_read_input(args.file, ctx.limits), ctx.limits)
        _out(schemas.put(args.name, schema, relaxed=args.relaxed, if_match=args.if_match).etag)
    else:
        schemas.delete(args.name, if_match=args.if_match)
    return EXIT_OK


def _store_report(ctx: _Context, *, verbose: bool) -> int:
    """`validate` without paths: stored configs that their schema rejects now."""
    report = ctx.open().schema_report()
    for violation in report.violations:
        mode = " (relaxed)" if violation.relaxed else ""
        for problem in violation.problems:
            _out(
                f"invalid  {violation.mac_address}: schema {violation.schema!r}{mode}: "
                f"{problem.pointer or '/'}: {problem.message}"
            )
    if verbose:
        bad = {v.mac_address for v in report.violations}
        for summary in ctx.open().listing().summaries:
            if summary.mac_address not in bad:
                _out(f"ok       {summary.mac_address}")
    strict = sum(1 for v in report.violations if not v.relaxed)
    relaxed = len(report.violations) - strict
    _out(
        f"{report.checked - len(report.violations)} valid, {strict} violating, "
        f"{relaxed} violating relaxed schemas"
    )
    return EXIT_FAILED if report.violations else EXIT_OK


def cmd_watch(ctx: _Context, args: argparse.Namespace) -> int:
    """Print one line per config change, from every writer, until interrupted (exit 0)."""
    from iot_config_core import watch  # noqa: PLC0415 -- kept beside the one command using it

    store = ctx.open()
    try:
        for change in watch(store, interval=args.interval, baseline={} if args.initial else None):
            mac = change.mac_address
            if args.json:
                line = {"mac_address": str(mac), "filename": mac.file_name, "etag": change.etag}
                _out(json.dumps(line))
            else:
                _out(f"{mac} {change.etag or 'deleted'}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # an import hook that refuses it
        return False


def cmd_serve(ctx: _Context, args: argparse.Namespace) -> int:
    """Run the HTTP server in the foreground until SIGTERM (the only subcommand needing Bottle)."""
    options = ("host", "port", "threads", "workers", "log_level", "log_format")
    overrides = {name: getattr(args, name) for name in options if getattr(args, name) is not None}
    settings = _evolve(ctx.settings, overrides)
    missing_extra = "serve needs the server extra (in a checkout: pip install '.[server]')"
    # Found, not imported: this process becomes the server's supervisor, which never runs the app,
    # and every module it imports is memory held twice (in it and in each worker it forks).
    absent = [name for name in ("bottle", "granian", "prometheus_client") if not _installed(name)]
    if absent:
        raise UsageError(f"{missing_extra}: no module named {absent[0]!r}")
    from iot_config_server.serve import serve  # noqa: PLC0415 -- only when serving

    try:
        return serve(settings)
    except ImportError as exc:  # the HTTP server itself is imported only once serving starts
        raise UsageError(f"{missing_extra}: {exc}") from exc


def cmd_device_token(ctx: _Context, args: argparse.Namespace) -> int:
    """Print a device's token, revoke or re-admit it, list revocations, or make a new secret."""
    path = args.secret_file or ctx.settings.device_secret_file
    # `--new-secret > FILE` runs with FILE already created empty by the shell: that is version 0.
    try:
        keyring: DeviceKeyring | None = (
            None
            if path is None or (args.new_secret and _is_empty_or_missing(path))
            else load_keyring(path)
        )
    except DeviceSecretError as exc:
        raise UsageError(f"{exc.message} [{exc.code}]") from None
    if args.new_secret:
        newest = 0 if keyring is None else keyring.newest
        _out(new_secret_line(args.key_version or newest + 1))
        return EXIT_OK
    if args.list_revoked:
        for entry in RevocationList(ctx.open().backend).entries():
            _out(f"{entry.mac_address}  through v{entry.through_version}  {entry.revoked_at}")
        return EXIT_OK
    if args.mac is None:
        raise UsageError("device-token needs a MAC (or --new-secret, --list-revoked)")
    mac = MacAddress.parse(args.mac)
    if args.unrevoke:
        if RevocationList(ctx.open().backend).unrevoke(mac):
            _out(f"{mac}: revocation removed")
        else:
            _out(f"{mac}: was not revoked")
        return EXIT_OK
    if keyring is None:
        raise UsageError("no device secret: set IOT_CONFIG_DEVICE_SECRET_FILE or --secret-file")
    if args.revoke:
        through = args.key_version or keyring.newest
        RevocationList(ctx.open().backend).revoke(mac, through)
        _out(f"{mac}: tokens up to key version v{through} revoked")
        return EXIT_OK
    _out(keyring.token(mac, args.key_version))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool, store: bool) -> None:
    """Options accepted before or after the subcommand (``--store`` X list = list --store X)."""
    default: Any = argparse.SUPPRESS if suppress else None
    if store:
        parser.add_argument(
            "--store",
            metavar="URL",
            type=_store_url,
            default=default,
            help="store path or URL (file:///abs/path, memory://, s3://bucket/prefix; "
            "file://dir is ./dir); default: $IOT_CONFIG_STORE, $ESP32_CONFIGS_DIR or ./iot-configs",
        )
    parser.add_argument(
        "--max-document-bytes",
        type=_positive_int,
        metavar="N",
        default=default,
        help="refuse documents larger than N bytes (default: $IOT_CONFIG_MAX_DOCUMENT_BYTES "
        f"or {DocumentLimits().max_bytes})",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="show tracebacks and debug logs",
    )


Handler = Callable[[_Context, argparse.Namespace], int]
MAC_HELP = "MAC address in any common spelling (AA:BB:CC:DD:EE:FF, aabbccddeeff, ...)"


def _is_empty_or_missing(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except FileNotFoundError:
        return True


def _watch_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The ``watch`` subcommand's options (``add`` is `build_parser`'s helper)."""
    sub = add(
        "watch",
        cmd_watch,
        "print config changes as they happen",
        "Print one line per change of a config, whoever made it (servers, this command, hand "
        "edits): 'MAC ETAG', or 'MAC deleted'. Lists the store every --interval seconds and "
        "re-reads only changed files. Runs until interrupted.",
    )
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_argument(
        "--interval", type=_positive_float, default=2.0, metavar="SECONDS", help="default 2"
    )
    sub.add_argument(
        "--initial", action="store_true", help="first print every config that exists (a resync)"
    )


def _device_token_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The ``device-token`` subcommand's options (``add`` is `build_parser`'s helper)."""
    sub = add(
        "device-token",
        cmd_device_token,
        "print, revoke or re-admit a device's token",
        "Print the token device MAC sends as 'Authorization: Bearer <token>', derived from the "
        "newest secret of $IOT_CONFIG_DEVICE_SECRET_FILE (the server's setting). --revoke "
        "refuses the device's tokens of every secret version up to the newest on every "
        "replica (a token of a later version, after a rotation, works again); --unrevoke "
        "lifts that. See docs/security.md.",
    )
    sub.add_argument("mac", metavar="MAC", nargs="?", help="MAC address in any common spelling")
    sub.add_argument(
        "--secret-file", metavar="FILE", help="default: $IOT_CONFIG_DEVICE_SECRET_FILE"
    )
    sub.add_argument(
        "--key-version",
        type=_positive_int,
        metavar="N",
        help="use (or, with --revoke, revoke through) secret version N instead of the newest",
    )
    action = sub.add_mutually_exclusive_group()
    action.add_argument("--revoke", action="store_true", help="revoke the device's tokens")
    action.add_argument("--unrevoke", action="store_true", help="remove the device's revocation")
    action.add_argument("--list-revoked", action="store_true", help="list revoked devices")
    action.add_argument(
        "--new-secret",
        action="store_true",
        help="print a new random secret line 'v<N>:<secret>' to append to the secret file",
    )


def _add_list_query_arguments(parser: argparse.ArgumentParser) -> None:
    """``list``'s filters and paging (the REST API's query parameters)."""
    parser.add_argument("--name", help="only names containing this text (any case)")
    parser.add_argument("--entity-id", help="only entity ids containing this text (any case)")
    parser.add_argument(
        "--ota",
        dest="enable_ota",
        choices=("true", "false"),
        help="only configs whose enableOTA is this",
    )
    parser.add_argument(
        "--limit", type=_positive_int, help=f"at most this many (up to {MAX_LIMIT}), in MAC order"
    )
    parser.add_argument(
        "--cursor", help="start after the previous page (the cursor it printed on stderr)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand stores its ``handler`` and its own ``parser``."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage ESP32 device configs: run the server, or list, get, put, delete, "
        "import, export and validate configs directly on a store.",
        epilog=f"{EXIT_STATUS_HELP}\n\n{STORE_HELP}",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False, store=True)
    with_store = argparse.ArgumentParser(add_help=False)
    _global_options(with_store, suppress=True, store=True)
    without_store = argparse.ArgumentParser(add_help=False)
    _global_options(without_store, suppress=True, store=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, handler: Handler, summary: str, description: str, *, store: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[with_store if store else without_store],
            help=summary,
            description=description,
            epilog=f"{EXIT_STATUS_HELP}\n\n{STORE_HELP}" if store else EXIT_STATUS_HELP,
            formatter_class=formatter,
        )
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    defaults = Settings()  # some defaults depend on the machine (threads: its CPUs)
    sub = add(
        "serve",
        cmd_serve,
        "run the REST and device server",
        "Run the HTTP server in the foreground until SIGTERM. Options override the "
        "IOT_CONFIG_* environment variables.",
    )
    sub.add_argument(
        "--host", help=f"address to bind (default {defaults.host}; 0.0.0.0 in containers)"
    )
    sub.add_argument("--port", type=_positive_int, help=f"port to bind (default {defaults.port})")
    sub.add_argument(
        "--threads",
        type=_positive_int,
        help="request threads per worker "
        f"(default $IOT_CONFIG_THREADS or {defaults.threads} on this machine)",
    )
    sub.add_argument(
        "--workers",
        type=_positive_int,
        help=f"worker processes (default $IOT_CONFIG_WORKERS or {defaults.workers})",
    )
    sub.add_argument("--log-level", help="debug, info, warning or error (default info)")
    sub.add_argument("--log-format", help="text or json (default text)")

    sub = add("list", cmd_list, "list the fleet", "List every valid config, sorted by MAC.")
    sub.add_argument("--json", action="store_true", help="machine-readable JSON output")
    _add_list_query_arguments(sub)

    sub = add(
        "get",
        cmd_get,
        "print one config",
        "Write a config to stdout exactly as stored (the bytes devices receive).",
    )
    sub.add_argument("mac", metavar="MAC", type=_mac, help=MAC_HELP)
    sub.add_argument("--etag", action="store_true", help="also print the ETag, alone on stderr")

    sub = add(
        "put",
        cmd_put,
        "validate and store one config",
        "Validate a JSON document and store it as the config of MAC; print the new ETag.",
    )
    sub.add_argument("mac", metavar="MAC", type=_mac, help=MAC_HELP)
    sub.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        default="-",
        help="the JSON document; - or nothing reads standard input",
    )
    sub.add_argument("--if-match", metavar="ETAG", help="write only if the stored ETag is ETAG")
    sub.add_argument(
        "--create-only", action="store_true", help="write only if no config exists yet"
    )
    sub.add_argument(
        "--create-store", action="store_true", help="create the store root if it is missing"
    )

    sub = add("delete", cmd_delete, "delete one config", "Delete the config of MAC.")
    sub.add_argument("mac", metavar="MAC", type=_mac, help=MAC_HELP)
    sub.add_argument("--if-match", metavar="ETAG", help="delete only if the stored ETag is ETAG")

    sub = add(
        "import",
        cmd_import,
        "import a directory of <mac>.json files",
        "Import every <mac>.json file of DIR (any MAC spelling in the name), validating each. "
        "Files that are not <mac>.json, two files naming one MAC, and invalid documents are "
        "rejected; the rest are imported. Hidden files are ignored. Each write is atomic and "
        "conditional on the version just compared, so a concurrent edit is never overwritten. "
        "`validate DIR` checks the same rules without a store.",
    )
    sub.add_argument(
        "directory", metavar="DIR", help="directory of <mac>.json files (any MAC spelling)"
    )
    sub.add_argument(
        "--dry-run", action="store_true", help="report what would happen, write nothing"
    )
    sub.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="replace configs that exist with different content (default: skip them)",
    )
    sub.add_argument(
        "--create-store", action="store_true", help="create the store root if it is missing"
    )
    sub.add_argument("--json", action="store_true", help="print the report as JSON")

    sub = add(
        "export",
        cmd_export,
        "export every config to a directory",
        "Write every valid config to DIR/<canonical-mac>.json, each file replaced atomically "
        "(temp file, fsync, rename). Files already identical are left alone.",
    )
    sub.add_argument("directory", metavar="DIR", help="directory to write to (created if missing)")

    sub = add(
        "validate",
        cmd_validate,
        "check documents without a store",
        "Check files (their content) and directories (every file, as `import` would: names, "
        "duplicate MACs, content) against the store's rules. Needs no store. Files with a "
        "legacy MAC spelling in their name are listed: a store skips them until imported. "
        "Without PATH, check every stored config against its JSON Schema and list the ones "
        "that violate it (exit status 1 if any).",
    )
    sub.add_argument(
        "paths",
        metavar="PATH",
        nargs="*",
        help="a JSON document file (- for standard input), or a directory of <mac>.json files",
    )
    sub.add_argument("-v", "--verbose", action="store_true", help="also list valid files")
    for more in (_add_patch_commands, _history_commands, _watch_parser, _device_token_parser):
        more(add)
    return parser


def _add_patch_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The ``patch`` and ``schema`` subcommands."""
    sub = add(
        "patch",
        cmd_patch,
        "change part of one config, or of every selected one",
        "Apply a JSON merge patch (RFC 7396, a JSON object: null removes a key) or a JSON Patch "
        "(RFC 6902, an array of operations) to the config of MAC and print the new ETag. When "
        "another write lands meanwhile, the patch is applied again to the new version. With "
        "--all, patch every device the filters select (all must hold; none: every device), "
        "each conditionally on the version it was selected from, and print a report of "
        "changed, unchanged and failed devices. The store's JSON Schemas apply to the result.",
    )
    sub.add_argument(
        "target", metavar="MAC", nargs="?", help=f"{MAC_HELP}; with --all, FILE instead"
    )
    sub.add_argument(
        "file", metavar="FILE", nargs="?", default="-", help="the patch; - or nothing: stdin"
    )
    kind = sub.add_mutually_exclusive_group()
    kind.add_argument(
        "--merge-patch",
        dest="patch_type",
        action="store_const",
        const=MERGE_PATCH,
        help="FILE is a merge patch (default for an object)",
    )
    kind.add_argument(
        "--json-patch",
        dest="patch_type",
        action="store_const",
        const=JSON_PATCH,
        help="FILE is a JSON Patch (default for an array)",
    )
    sub.add_argument("--if-match", metavar="ETAG", help="patch only if the stored ETag is ETAG")
    sub.add_argument("--dry-run", action="store_true", help="check and report; write nothing")
    sub.add_argument("--all", action="store_true", help="patch every selected device")
    sub.add_argument("--mac", metavar="GLOB", help="--all: MACs matching GLOB (aa-bb-*)")
    sub.add_argument("--mac-regex", metavar="REGEX", type=_regex, help="--all: MACs matching")
    sub.add_argument("--name", metavar="GLOB", help="--all: deviceName matching GLOB")
    sub.add_argument("--name-regex", metavar="REGEX", type=_regex, help="--all: deviceName")
    sub.add_argument("--entity-id", metavar="GLOB", help="--all: deviceEntityId matching GLOB")
    sub.add_argument(
        "--ota", choices=("yes", "no", "unset"), help="--all: enableOTA true, false or unset"
    )
    sub.add_argument("--json", action="store_true", help="--all: print the report as JSON")

    sub = add(
        "schema",
        cmd_schema,
        "manage the JSON Schemas configs are checked against",
        "A config is checked against the schema its deviceModel names, else the schema "
        "named 'default', else none (docs/schemas.md). `put` checks the schema (draft-07) "
        "first; --relaxed schemas only report problems (see `validate` without PATH).",
    )
    actions = sub.add_subparsers(
        dest="action", metavar="ACTION", required=True, help="what to do with the schemas"
    )
    actions.add_parser("list", help="print the schema names")
    get = actions.add_parser("get", help="print one schema (its mode and ETag on stderr)")
    get.add_argument("name", metavar="NAME")
    put = actions.add_parser("put", help="store a schema from FILE (- : stdin)")
    put.add_argument("name", metavar="NAME")
    put.add_argument("file", metavar="FILE", nargs="?", default="-")
    put.add_argument("--relaxed", action="store_true", help="report problems, refuse nothing")
    put.add_argument("--if-match", metavar="ETAG", help="write only if the stored ETag is ETAG")
    delete = actions.add_parser("delete", help="delete a schema")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--if-match", metavar="ETAG", help="delete only if at ETAG")


def _history_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The subcommands over a config's version history (docs/history.md)."""
    sub = add(
        "history",
        cmd_history,
        "list the versions of one config",
        "List the versions of MAC's config, newest first, with who saved each, when, and "
        "through what (api, cli, library, or external: changed outside the store). A deleted "
        "config keeps its history.",
    )
    sub.add_argument("mac", metavar="MAC", type=_mac, help=MAC_HELP)
    sub.add_argument("--json", action="store_true", help="the REST API's JSON shape")
    sub = add("show", cmd_show, "print one version", "Print version ETAG of MAC's config.")
    sub.add_argument("mac", metavar="MAC", type=_mac, help=MAC_HELP)
    sub.add_argument("etag", metavar="ETAG", help="a version's ETag, from `history`")
    sub = add(
        "diff",
        cmd_diff,
        "what changed between two versions",
        "Print the RFC 6902 JSON Patch that turns version OLD of MAC's config into NEW "
        "(default: the current config).",
    )
    sub.add_argument("mac", metavar="MAC", type=_mac, help=MAC_HELP)
    sub.add_argument("old", metavar="OLD", help="a version's ETag, from `history`")
    sub.add_argument("new", metavar="NEW", nargs="?", help="another version (default: current)")
    sub = add(
        "rollback",
        cmd_rollback,
        "write an earlier version again",
        "Write version ETAG of MAC's config again, as a new version (the old one stays in the "
        "history); print the ETag now stored. Also restores a deleted config.",
    )
    sub.add_argument("mac", metavar="MAC", type=_mac, help=MAC_HELP)
    sub.add_argument("etag", metavar="ETAG", help="the version to restore, from `history`")
    sub.add_argument(
        "--if-match", metavar="ETAG", help="only if the current version is ETAG (no lost edit)"
    )
    sub = add(
        "undelete",
        cmd_undelete,
        "restore a deleted config",
        "Restore the newest version MAC's config had before it was deleted; refused if a "
        "config exists.",
    )
    sub.add_argument("mac", metavar="MAC", type=_mac, help=MAC_HELP)


# -- entry point ----------------------------------------------------------------------------------


class _StderrHandler(logging.Handler):
    """Log records to whatever ``sys.stderr`` is now (tests and pipes swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"{PROG}: {record.levelname.lower()}: {record.getMessage()}\n")


@contextlib.contextmanager
def _library_logging(debug: bool) -> Iterator[None]:
    """Show the core's warnings (skipped files) as ``iot-config: warning: ...`` lines."""
    logger = logging.getLogger("iot_config_core")
    handler = _StderrHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _exit_status(exc: ConfigError | UsageError) -> int:
    """The exit status of a failed command (``EXIT_STATUS_HELP``).

    Core errors take theirs from the one error table, beside their HTTP status; the CLI's own
    errors are usage errors, except a local write that failed underneath.
    """
    if isinstance(exc, FileError) and exc.unavailable:
        return EXIT_UNAVAILABLE
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    return int(exit_status_for(exc))


def _evolve(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    try:
        return attrs.evolve(settings, **overrides)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def _context(args: argparse.Namespace, environ: Mapping[str, str]) -> _Context:
    if args.command == "validate" and args.paths and args.store is not None:
        raise UsageError("validate checks files without a store: leave --store out")
    options = {"store_url": args.store, "max_document_bytes": args.max_document_bytes}
    overrides = {name: value for name, value in options.items() if value is not None}
    return _Context(_evolve(_env_settings(environ), overrides))


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, reporting unknown options with the usage of the subcommand they were given to."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command line; returns the exit status (see ``EXIT_STATUS_HELP``)."""
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as exc:  # --help (0) and usage errors (2): argparse has printed them
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    env = os.environ if environ is None else environ
    handler: Handler = args.handler
    failure: BaseException
    try:
        ctx = _context(args, env)
        if args.command == "serve":
            return handler(ctx, args)
        with _library_logging(args.debug), attributed(os_user(), "cli"):
            return handler(ctx, args)
    except (UsageError, ConfigError) as exc:
        failure, status, message = exc, _exit_status(exc), _describe(exc)
    except KeyboardInterrupt as exc:
        failure, status, message = exc, 130, "interrupted"
    except BrokenPipeError:  # `iot-config list | head`: the reader left, nothing to report
        with contextlib.suppress(OSError, ValueError):
            # Point stdout at /dev/null so the interpreter's exit-time flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a local file no handler expected: a clear line, not a traceback
        failure, status = exc, EXIT_UNAVAILABLE
        message = f"{exc.filename or ''}: {exc.strerror or exc} [{FileError.code}]"
    if args.debug:
        traceback.print_exception(failure, file=sys.stderr)
    _err(f"{PROG}: error: {message}")
    return status


if __name__ == "__main__":
    sys.exit(main())
