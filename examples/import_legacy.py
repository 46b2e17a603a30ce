"""Import a directory of legacy ``<mac>.json`` files into a store, with a per-file report.

    . .venv/bin/activate          # the environment of the README's install
    python3 examples/import_legacy.py /old/service/configs ./iot-configs --create
    python3 examples/import_legacy.py /old/service/configs s3://fleet/configs --dry-run --json

A script's view of what ``iot-config import`` does: both follow the one policy of
`iot_config_core.legacy` (names in any MAC spelling, two files for one MAC rejected, every
document checked with the store's rules, writes conditional on the version compared, nothing
overwritten without ``--overwrite``). Run again, it reports what it imported as unchanged.

Exit status: 0 when no file was rejected, 1 when any was, 2 for bad arguments, 3 when the store
failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence

from iot_config_core import ConfigError, DocumentLimits, StoreUnavailableError, open_store
from iot_config_core.document import DEFAULT_MAX_BYTES
from iot_config_core.legacy import FileReport, LegacyDirectory, Outcome


def print_report(reports: list[FileReport], *, as_json: bool, dry_run: bool) -> None:
    """One line per file and a count per outcome, or the same as one JSON document."""
    counts = Counter(r.outcome.value for r in reports)
    totals = {outcome.value: counts[outcome.value] for outcome in Outcome}
    if as_json:
        files = [
            {
                "file": r.file,
                "status": r.outcome.value,
                "mac_address": None if r.mac is None else str(r.mac),
                "reason": r.reason,
                "code": r.code,
            }
            for r in reports
        ]
        print(json.dumps({"dry_run": dry_run, "counts": totals, "files": files}, indent=2))
        return
    for r in reports:
        mac = "-" if r.mac is None else str(r.mac)
        code = f" [{r.code}]" if r.code else ""
        print(
            f"{r.outcome.value:<9}  {mac:<17}  {r.file}"
            + (f": {r.reason}{code}" if r.reason else "")
        )
    shown = ", ".join(f"{n} {outcome}" for outcome, n in totals.items())
    print(("dry run: " if dry_run else "") + shown)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the import; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("legacy_dir", help="directory of legacy <mac>.json files")
    parser.add_argument("store", help="store URL or path (./configs, file:///abs/path, s3://...)")
    parser.add_argument("--dry-run", action="store_true", help="validate and report, write nothing")
    parser.add_argument("--overwrite", action="store_true", help="replace differing configs")
    parser.add_argument("--create", action="store_true", help="create the store root if missing")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="size limit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    try:
        limits = DocumentLimits(max_bytes=args.max_bytes)
    except ValueError as exc:
        parser.error(f"--max-bytes: {exc}")
    try:
        directory = LegacyDirectory.open(args.legacy_dir)
    except OSError as exc:
        parser.error(f"{args.legacy_dir}: {exc.strerror or exc}")
    reports: list[FileReport] = []
    try:
        store = open_store(args.store, create=args.create and not args.dry_run, limits=limits)
        reports.extend(directory.import_into(store, overwrite=args.overwrite, dry_run=args.dry_run))
    except ConfigError as exc:  # an outage or an unusable URL, not a bad file: stop and say so
        print(f"error: {exc.message} [{exc.code}]", file=sys.stderr)
        if reports:  # the files handled before the failure stand
            print_report(reports, as_json=args.json, dry_run=args.dry_run)
        return 3 if isinstance(exc, StoreUnavailableError) else 2
    print_report(reports, as_json=args.json, dry_run=args.dry_run)
    return 1 if any(r.outcome is Outcome.REJECTED for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
