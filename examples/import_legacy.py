"""Bulk-validate a directory of legacy ``<mac>.json`` files and import them into a store.

    python examples/import_legacy.py /old/service/configs ./iot-configs --dry-run
    python examples/import_legacy.py /old/service/configs s3://fleet/configs --overwrite --json

The old service accepted any file name spelling of a MAC (``AA:BB:CC:DD:EE:FF.json``,
``aabbccddeeff.json``, ...) and any bytes. Every file is checked with the same rules the store
applies (MAC parsing, strict JSON, size and depth limits) before anything is written, so the report
says exactly which files need a human and why. Imports never clobber: a new config is written with
``create_only``; one already stored with different content is reported as a conflict unless
``--overwrite`` is given, and then replaced only if it has not changed since it was read
(``if_match``). Running the import twice reports everything as unchanged the second time.

Exit status: 0 when every file was imported or already up to date, 1 when any was rejected or the
store failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from iot_config_core import (
    AlreadyExistsError,
    ConfigError,
    ConfigStore,
    CorruptDocumentError,
    DocumentLimits,
    InvalidDocumentError,
    InvalidMacError,
    MacAddress,
    NotFoundError,
    PreconditionFailedError,
    decode_document,
    open_store,
)
from iot_config_core.document import DEFAULT_MAX_BYTES


@attrs.frozen
class Candidate:
    """A legacy file that passed validation: the config it holds for one MAC."""

    file: str
    mac: MacAddress
    content: dict[str, Any]


@attrs.frozen
class Outcome:
    """What happened to one legacy file: ``imported``, ``unchanged`` or ``rejected``."""

    file: str
    status: str
    mac: MacAddress | None = None
    reason: str = ""


def _read_limited(path: str, limit: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(limit + 1)  # one byte more than allowed is enough to say "too large"


def validate(directory: str, limits: DocumentLimits) -> tuple[list[Candidate], list[Outcome]]:
    """Check every file in ``directory``; returns the importable ones and the rejections."""
    candidates: list[Candidate] = []
    rejected: list[Outcome] = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            mac = MacAddress.from_legacy_file_name(entry.name)
        except InvalidMacError as exc:
            problem = exc.details["problem"]
            reason = problem if problem == "not a .json file" else f"bad file name: {problem}"
            rejected.append(Outcome(entry.name, "rejected", reason=reason))
            continue
        try:
            content = decode_document(_read_limited(entry.path, limits.max_bytes), limits)
        except InvalidDocumentError as exc:
            reason = f"{exc.details.get('reason', 'invalid')}: {exc.message}"
            rejected.append(Outcome(entry.name, "rejected", mac, reason))
            continue
        except OSError as exc:
            rejected.append(Outcome(entry.name, "rejected", mac, f"unreadable: {exc}"))
            continue
        candidates.append(Candidate(entry.name, mac, content))
    return _drop_conflicting_duplicates(candidates, rejected)


def _drop_conflicting_duplicates(
    candidates: list[Candidate], rejected: list[Outcome]
) -> tuple[list[Candidate], list[Outcome]]:
    """Two spellings of one MAC: import once if they agree, reject all if they do not."""
    by_mac: dict[MacAddress, list[Candidate]] = {}
    for candidate in candidates:
        by_mac.setdefault(candidate.mac, []).append(candidate)
    kept: list[Candidate] = []
    for group in by_mac.values():
        first, *others = group
        if all(_same_json(first.content, other.content) for other in others):
            kept.append(first)
            rejected.extend(
                Outcome(o.file, "unchanged", o.mac, f"same content as {first.file}") for o in others
            )
        else:
            names = ", ".join(c.file for c in group)
            rejected.extend(
                Outcome(c.file, "rejected", c.mac, f"conflicting files for one MAC: {names}")
                for c in group
            )
    return kept, rejected


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality (Python says ``True == 1``; JSON does not)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def import_one(
    store: ConfigStore, candidate: Candidate, *, overwrite: bool, dry_run: bool
) -> Outcome:
    """Bring one validated config into the store without overwriting anyone else's edit."""
    file, mac = candidate.file, candidate.mac
    try:
        current = store.get(mac)
    except NotFoundError:
        if dry_run:
            return Outcome(file, "imported", mac, "new (dry run: not written)")
        try:
            store.put(mac, candidate.content, create_only=True)
        except AlreadyExistsError:
            return Outcome(file, "rejected", mac, "created by someone else during the import")
        return Outcome(file, "imported", mac, "new")
    except CorruptDocumentError as exc:
        if not overwrite:
            return Outcome(file, "rejected", mac, "stored config is corrupt; use --overwrite")
        expected = str(exc.details["etag"])
    else:
        if _same_json(current.content, candidate.content):
            return Outcome(file, "unchanged", mac)
        if not overwrite:
            return Outcome(file, "rejected", mac, "stored config differs; use --overwrite")
        expected = current.etag
    if dry_run:
        return Outcome(file, "imported", mac, "replaces stored config (dry run: not written)")
    try:
        store.put(mac, candidate.content, if_match=expected)
    except PreconditionFailedError:
        return Outcome(file, "rejected", mac, "stored config changed during the import")
    return Outcome(file, "imported", mac, "replaced stored config")


def _print_report(outcomes: list[Outcome], *, as_json: bool, dry_run: bool) -> None:
    counts = dict.fromkeys(("imported", "unchanged", "rejected"), 0)
    for outcome in outcomes:
        counts[outcome.status] += 1
    if as_json:
        report = {
            "dry_run": dry_run,
            "counts": counts,
            "files": [
                {
                    "file": o.file,
                    "status": o.status,
                    "mac_address": None if o.mac is None else str(o.mac),
                    "reason": o.reason,
                }
                for o in outcomes
            ],
        }
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    for o in outcomes:
        mac = "-" if o.mac is None else str(o.mac)
        print(f"{o.status:<9}  {mac:<17}  {o.file}" + (f": {o.reason}" if o.reason else ""))
    prefix = "dry run: " if dry_run else ""
    print(
        f"{prefix}{counts['imported']} imported, {counts['unchanged']} unchanged, "
        f"{counts['rejected']} rejected"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the import; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("legacy_dir", help="directory of legacy <mac>.json files")
    parser.add_argument("store", help="store URL or path (./configs, file://..., s3://...)")
    parser.add_argument("--dry-run", action="store_true", help="validate and report, write nothing")
    parser.add_argument("--overwrite", action="store_true", help="replace differing configs")
    parser.add_argument("--create", action="store_true", help="create the store root if missing")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="size limit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    if not os.path.isdir(args.legacy_dir):
        print(f"error: {args.legacy_dir} is not a directory", file=sys.stderr)
        return 1
    try:
        limits = DocumentLimits(max_bytes=args.max_bytes)
    except ValueError as exc:
        parser.error(f"--max-bytes: {exc}")
    candidates, outcomes = validate(args.legacy_dir, limits)
    try:
        store = open_store(args.store, create=args.create and not args.dry_run, limits=limits)
        store.listing()  # fail early, before any write, when the store is unreachable
        for candidate in candidates:
            outcomes.append(
                import_one(store, candidate, overwrite=args.overwrite, dry_run=args.dry_run)
            )
    except ConfigError as exc:  # an outage, not a bad file: stop and say so
        print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    outcomes.sort(key=lambda o: o.file)
    _print_report(outcomes, as_json=args.json, dry_run=args.dry_run)
    return 1 if any(o.status == "rejected" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
