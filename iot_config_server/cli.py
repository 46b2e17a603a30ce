"""The ``iot-config`` command: run the server, or work on a store directly from a shell.

Every subcommand except ``serve`` works on the store in-process through `iot_config_core` (never
over HTTP and never by shelling out), so it gets the same validation and compare-and-swap
guarantees as the server, works while no server runs, and needs no web framework installed:
``serve`` is the only subcommand that imports Bottle, and it does so only when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from iot_config_core import (
    AlreadyExistsError,
    ConfigError,
    ConfigStore,
    ConfigSummary,
    DocumentLimits,
    DocumentTooLargeError,
    InvalidDocumentError,
    InvalidETagError,
    InvalidMacError,
    MacAddress,
    NotFoundError,
    PreconditionFailedError,
    StoreUnavailableError,
    UnsupportedStoreError,
    compute_etag,
    decode_document,
    encode_document,
    open_store,
)
from iot_config_core.posix_backend import sync_directory, write_file_atomically
from iot_config_core.wire import summary_to_wire
from iot_config_server.settings import Settings, SettingsError  # plain attrs: no Bottle

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]

PROG = "iot-config"
EXIT_OK = 0
#: A document, a precondition or a lookup failed: not found, stale ETag, exists, invalid, corrupt.
EXIT_FAILED = 1
#: The command line itself was wrong (argparse uses 2 as well).
EXIT_USAGE = 2
#: The store could not be reached or failed; retrying later may succeed.
EXIT_UNAVAILABLE = 3


EXIT_STATUS_HELP = """\
exit status:
  0  success
  1  validation or precondition failure: invalid document, config not found, ETag mismatch
     (--if-match), config already exists (--create-only), corrupt stored file, import rejections
  2  usage error: bad option, bad MAC or ETag spelling, unreadable input file, unsupported URL
  3  store unavailable: missing store root, I/O error, unreachable object store

The store is --store, else $IOT_CONFIG_STORE, else $ESP32_CONFIGS_DIR, else ./iot-configs
(exactly what `iot-config serve` uses)."""


class UsageError(Exception):
    """The command line asked for something impossible (unreadable input, bad value)."""


# -- where the store is ---------------------------------------------------------------------------


def _env_settings(environ: Mapping[str, str]) -> Settings:
    """The server's settings, so the CLI and the server agree on the store and its limits."""
    try:
        return Settings.from_env(environ)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


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
    """What every subcommand needs: where the store is, its limits, and the server's settings."""

    store_url: str
    limits: DocumentLimits
    settings: Settings

    def open(self, *, create: bool = False) -> ConfigStore:
        return open_store(self.store_url, create=create, limits=self.limits)


# -- output helpers -------------------------------------------------------------------------------


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _write_bytes(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _describe(exc: ConfigError) -> str:
    """One line: the message, the current ETag when a precondition failed, the stable code."""
    current = exc.details.get("current_etag")
    if isinstance(exc, PreconditionFailedError | AlreadyExistsError) and current is not None:
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


def _read_input(path: str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a file or stdin: an oversized file is never loaded whole."""
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
        size = None
    else:
        try:
            with open(path, "rb") as stream:
                data = stream.read(limit + 1)
                size = os.fstat(stream.fileno()).st_size
        except IsADirectoryError:
            raise UsageError(f"{path}: is a directory") from None
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        shown = f"{size} bytes" if size is not None and size > limit else f"over {limit} bytes"
        raise DocumentTooLargeError(
            f"document of {shown} exceeds the limit of {limit} bytes",
            reason="too_large",
            size=size,
            limit=limit,
        )
    return data


def _validated(data: bytes, limits: DocumentLimits) -> tuple[dict[str, Any], bytes]:
    """The content of ``data`` and the exact bytes the store would write for it.

    Both directions are checked: the store pretty-prints, so a compact document under the limit
    can still be over it once stored.
    """
    content = decode_document(data, limits)
    return content, encode_document(content, limits)


def _directory_files(path: str) -> list[str]:
    """Regular, non-hidden files of a directory, sorted (hidden: .locks/, editor temp files)."""
    try:
        with os.scandir(path) as it:
            names = [item.name for item in it if not item.name.startswith(".") and item.is_file()]
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    return sorted(names)


# -- subcommands ----------------------------------------------------------------------------------


def cmd_list(ctx: _Context, args: argparse.Namespace) -> int:
    """Print the fleet as a table, or as JSON with ``--json``."""
    listing = ctx.open().listing()
    summaries = listing.summaries
    if args.json:
        document = {
            "configs": [_summary_json(s) for s in summaries],
            "count": len(summaries),
            "skipped": list(listing.skipped),
        }
        _out(json.dumps(document, indent=2, ensure_ascii=False))
        return EXIT_OK
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
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i == 4 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        _out("  ".join(cells).rstrip())
    return EXIT_OK


def cmd_get(ctx: _Context, args: argparse.Namespace) -> int:
    """Write the stored bytes of one config to stdout, exactly as devices receive them."""
    raw = ctx.open().get_raw(args.mac)
    _write_bytes(raw.data)
    if args.etag:
        _err(raw.etag)
    return EXIT_OK


def cmd_put(ctx: _Context, args: argparse.Namespace) -> int:
    """Validate a document and store it; print the new ETag."""
    mac = MacAddress.parse(args.mac)
    content, _ = _validated(_read_input(args.file, ctx.limits.max_bytes), ctx.limits)
    store = ctx.open(create=args.create_store)
    stored = store.put(mac, content, if_match=args.if_match, create_only=args.create_only)
    _out(stored.etag)
    return EXIT_OK


def cmd_delete(ctx: _Context, args: argparse.Namespace) -> int:
    """Delete one config, optionally only at a known version."""
    mac = MacAddress.parse(args.mac)
    ctx.open().delete(mac, if_match=args.if_match)
    _err(f"deleted {mac}")
    return EXIT_OK


@attrs.define
class _ImportReport:
    """What happened to each file of an import, in the order the files were seen."""

    dry_run: bool
    imported: list[str] = attrs.Factory(list)
    unchanged: list[str] = attrs.Factory(list)
    skipped: list[tuple[str, str]] = attrs.Factory(list)
    rejected: list[tuple[str, str, str]] = attrs.Factory(list)

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "imported": self.imported,
            "unchanged": self.unchanged,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "rejected": [{"file": f, "reason": r, "code": c} for f, r, c in self.rejected],
        }

    def print_text(self) -> None:
        for name, reason in self.skipped:
            _out(f"skipped   {name}: {reason}")
        for name, reason, code in self.rejected:
            _out(f"rejected  {name}: {reason} [{code}]")
        verb = "would import" if self.dry_run else "imported"
        _out(
            f"{'dry run, nothing written: ' if self.dry_run else ''}{verb} {len(self.imported)}, "
            f"unchanged {len(self.unchanged)}, skipped {len(self.skipped)}, "
            f"rejected {len(self.rejected)}"
        )


def _import_one(
    store: ConfigStore,
    mac: MacAddress,
    data: bytes,
    *,
    overwrite: bool,
    dry_run: bool,
) -> tuple[str, str]:
    """Import one document; returns ``(outcome, reason)``. Invalid content raises."""
    content, encoded = _validated(data, store.limits)
    current = store.etag(mac)
    if current == compute_etag(encoded):
        return "unchanged", ""
    if current is not None and not overwrite:
        return "skipped", f"a config for {mac} exists (use --overwrite to replace it)"
    if dry_run:
        return "imported", ""
    try:
        # Conditional on what was just compared, so an edit made meanwhile is never overwritten.
        if current is None:
            store.put(mac, content, create_only=True)
        else:
            store.put(mac, content, if_match=current)
    except (PreconditionFailedError, AlreadyExistsError):
        return "skipped", f"the config for {mac} changed during the import; re-run to retry"
    return "imported", ""


def _importable_names(names: list[str], report: _ImportReport) -> dict[str, MacAddress]:
    """File name -> MAC for every importable name; the others are rejected in ``report``."""
    macs: dict[str, MacAddress] = {}
    by_mac: dict[MacAddress, list[str]] = {}
    for name in names:
        try:
            macs[name] = MacAddress.from_legacy_file_name(name)
        except InvalidMacError as exc:
            report.rejected.append((name, exc.message, exc.code))
            continue
        by_mac.setdefault(macs[name], []).append(name)
    for mac, spellings in by_mac.items():
        if len(spellings) > 1:  # which one should win is a guess; refuse to guess
            for name in spellings:
                others = ", ".join(n for n in spellings if n != name)
                report.rejected.append((name, f"same MAC {mac} as {others}", "DUPLICATE_MAC"))
                del macs[name]
    return macs


def cmd_import(ctx: _Context, args: argparse.Namespace) -> int:
    """Import every ``<mac>.json`` of a directory; one bad file never stops the rest."""
    names = _directory_files(args.directory)
    store = ctx.open(create=args.create_store and not args.dry_run)
    # Fail before the first file, not after it: a dry run needs a readable store, a real import
    # a writable one.
    if args.dry_run:
        store.listing()
    else:
        store.check()
    report = _ImportReport(dry_run=args.dry_run)
    macs = _importable_names(names, report)
    progress = _Progress(len(macs), "importing")
    try:
        for done, (name, mac) in enumerate(sorted(macs.items()), start=1):
            progress.update(done)
            path = os.path.join(args.directory, name)
            try:
                data = _read_input(path, store.limits.max_bytes)
                outcome, reason = _import_one(
                    store, mac, data, overwrite=args.overwrite, dry_run=args.dry_run
                )
            except UsageError as exc:  # unreadable file: report it, carry on
                report.rejected.append((name, str(exc), "UNREADABLE"))
                continue
            except InvalidDocumentError as exc:
                report.rejected.append((name, exc.message, exc.code))
                continue
            if outcome == "imported":
                report.imported.append(name)
            elif outcome == "unchanged":
                report.unchanged.append(name)
            else:
                report.skipped.append((name, reason))
    except StoreUnavailableError:
        progress.close()
        _out("import interrupted; files before the failure were handled as reported:")
        report.print_text()
        raise
    progress.close()
    report.rejected.sort()
    if args.json:
        _out(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        report.print_text()
    return EXIT_FAILED if report.rejected else EXIT_OK


def cmd_export(ctx: _Context, args: argparse.Namespace) -> int:
    """Write every valid config to ``DIR/<canonical-mac>.json``, atomically per file."""
    store = ctx.open()
    listing = store.listing()
    try:
        os.makedirs(args.directory, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{args.directory}: {exc.strerror or exc}") from None
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
        write_file_atomically(args.directory, mac.file_name, raw.data, sync=False)
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


def _validate_file(path: str, limits: DocumentLimits, *, check_name: bool) -> str | None:
    """Why ``path`` would be refused by the store, or ``None`` when it is acceptable."""
    try:
        if check_name:
            MacAddress.from_legacy_file_name(os.path.basename(path))
        _validated(_read_input(path, limits.max_bytes), limits)
    except ConfigError as exc:
        return _describe(exc)
    return None


def cmd_validate(ctx: _Context, args: argparse.Namespace) -> int:
    """Check files (content) and directories (every ``*.json``: content and name); no store."""
    files: list[tuple[str, bool]] = []
    for path in args.paths:
        if os.path.isdir(path):
            files.extend(
                (os.path.join(path, name), True)
                for name in _directory_files(path)
                if name.lower().endswith(".json")
            )
        elif os.path.exists(path) or path == "-":
            files.append((path, False))
        else:
            raise UsageError(f"{path}: no such file or directory")
    invalid = 0
    for path, check_name in files:
        problem = _validate_file(path, ctx.limits, check_name=check_name)
        if problem is None:
            if args.verbose:
                _out(f"ok       {path}")
        else:
            invalid += 1
            _out(f"invalid  {path}: {problem}")
    _out(f"{len(files) - invalid} valid, {invalid} invalid")
    return EXIT_FAILED if invalid else EXIT_OK


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


def cmd_serve(ctx: _Context, args: argparse.Namespace) -> int:
    """Run the HTTP server in the foreground until SIGTERM (the only subcommand needing Bottle)."""
    overrides: dict[str, Any] = {"store_url": ctx.store_url}
    for option in ("host", "port", "threads", "workers", "log_level", "log_format"):
        value = getattr(args, option)
        if value is not None:
            overrides[option] = value
    if args.max_document_bytes is not None:
        overrides["max_document_bytes"] = args.max_document_bytes
    try:
        settings = attrs.evolve(ctx.settings, **overrides)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    missing_extra = "serve needs the server extra (pip install 'iot-config[server]')"
    try:
        # Imported here, not at the top, so every other subcommand works without Bottle.
        import iot_config_server.app  # noqa: F401, PLC0415 -- fail early, before anything binds
        from iot_config_server.serve import serve  # noqa: PLC0415
    except ImportError as exc:
        raise UsageError(f"{missing_extra}: {exc}") from exc
    try:
        return serve(settings)
    except ImportError as exc:  # the HTTP server itself is imported only once serving starts
        raise UsageError(f"{missing_extra}: {exc}") from exc


# -- parser ---------------------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted before or after the subcommand (``--store`` X list = list --store X)."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--store",
        metavar="URL",
        default=default,
        help="store path or URL (file://, memory://, s3://bucket/prefix); "
        "default: $IOT_CONFIG_STORE, $ESP32_CONFIGS_DIR or ./iot-configs",
    )
    parser.add_argument(
        "--max-document-bytes",
        type=_positive_int,
        metavar="N",
        default=default,
        help="refuse documents larger than N bytes (default: $IOT_CONFIG_MAX_DOCUMENT_BYTES "
        "or 1 MiB)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="show tracebacks and debug logs",
    )


Handler = Callable[[_Context, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand stores its handler as ``handler``."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage ESP32 device configs: run the server, or list, get, put, delete, "
        "import, export and validate configs directly on a store.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=formatter,
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, summary: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description,
            epilog=EXIT_STATUS_HELP,
            formatter_class=formatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    sub = add(
        "serve",
        cmd_serve,
        "run the REST and device server",
        "Run the HTTP server in the foreground until SIGTERM. Options override the "
        "IOT_CONFIG_* environment variables.",
    )
    sub.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in containers)")
    sub.add_argument("--port", type=_positive_int, help="port to bind (default 8080)")
    sub.add_argument("--threads", type=_positive_int, help="request threads per worker")
    sub.add_argument("--workers", type=_positive_int, help="worker processes")
    sub.add_argument("--log-level", help="debug, info, warning or error")
    sub.add_argument("--log-format", help="text or json")

    sub = add("list", cmd_list, "list the fleet", "List every valid config, sorted by MAC.")
    sub.add_argument("--json", action="store_true", help="machine-readable JSON output")

    sub = add(
        "get",
        cmd_get,
        "print one config",
        "Write a config to stdout exactly as stored (the bytes devices receive).",
    )
    sub.add_argument("mac", metavar="MAC", help="MAC address in any common spelling")
    sub.add_argument("--etag", action="store_true", help="also print the ETag, alone on stderr")

    sub = add(
        "put",
        cmd_put,
        "validate and store one config",
        "Validate a JSON document and store it as the config of MAC; print the new ETag.",
    )
    sub.add_argument("mac", metavar="MAC", help="MAC address in any common spelling")
    sub.add_argument("file", metavar="FILE", nargs="?", default="-", help="document (- = stdin)")
    sub.add_argument("--if-match", metavar="ETAG", help="write only if the stored ETag is ETAG")
    sub.add_argument(
        "--create-only", action="store_true", help="write only if no config exists yet"
    )
    sub.add_argument(
        "--create-store", action="store_true", help="create the store root if it is missing"
    )

    sub = add("delete", cmd_delete, "delete one config", "Delete the config of MAC.")
    sub.add_argument("mac", metavar="MAC", help="MAC address in any common spelling")
    sub.add_argument("--if-match", metavar="ETAG", help="delete only if the stored ETag is ETAG")

    sub = add(
        "import",
        cmd_import,
        "import a directory of <mac>.json files",
        "Import every <mac>.json file of DIR (any MAC spelling in the name), validating each. "
        "Invalid files are reported and skipped; the rest are imported. Hidden files are "
        "ignored. Each write is atomic and conditional on the version just compared, so a "
        "concurrent edit is never overwritten.",
    )
    sub.add_argument("directory", metavar="DIR")
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
    sub.add_argument("directory", metavar="DIR")

    sub = add(
        "validate",
        cmd_validate,
        "check documents without a store",
        "Check files (their content) and directories (every *.json file: content and MAC file "
        "name) against the store's rules. Needs no store.",
    )
    sub.add_argument("paths", metavar="PATH", nargs="+")
    sub.add_argument("-v", "--verbose", action="store_true", help="also list valid files")

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
    return parser


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


def _exit_status(exc: ConfigError) -> int:
    if isinstance(exc, StoreUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, InvalidMacError | InvalidETagError | UnsupportedStoreError):
        return EXIT_USAGE
    return EXIT_FAILED


def _context(args: argparse.Namespace, environ: Mapping[str, str]) -> _Context:
    settings = _env_settings(environ)
    max_bytes = args.max_document_bytes or settings.max_document_bytes
    return _Context(args.store or settings.store_url, DocumentLimits(max_bytes=max_bytes), settings)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command line; returns the exit status (see ``EXIT_STATUS_HELP``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2): argparse has printed them
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    env = os.environ if environ is None else environ
    handler: Handler = args.handler
    failure: BaseException
    try:
        ctx = _context(args, env)
        if args.command == "serve":
            return handler(ctx, args)
        with _library_logging(args.debug):
            return handler(ctx, args)
    except UsageError as exc:
        failure, status, message = exc, EXIT_USAGE, str(exc)
    except ConfigError as exc:
        failure, status, message = exc, _exit_status(exc), _describe(exc)
    except KeyboardInterrupt as exc:
        failure, status, message = exc, 130, "interrupted"
    except BrokenPipeError:  # `iot-config list | head`: the reader left, nothing to report
        with contextlib.suppress(OSError, ValueError):
            # Point stdout at /dev/null so the interpreter's exit-time flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # local files (export targets): a clear line, not a traceback
        failure, status = exc, EXIT_UNAVAILABLE
        message = f"{exc.filename or ''}: {exc.strerror or exc}"
    if args.debug:
        traceback.print_exception(failure, file=sys.stderr)
    _err(f"{PROG}: error: {message}")
    return status


if __name__ == "__main__":
    sys.exit(main())
