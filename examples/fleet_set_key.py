"""Set one key on every device whose name matches, without ever overwriting a concurrent edit.

    . .venv/bin/activate          # the environment of the README's install
    echo '{"deviceName": "kitchen-1"}' | iot-config put aa-bb-cc-dd-ee-01 --create-store
    python3 examples/fleet_set_key.py --store ./iot-configs --name 'kitchen-*' enableOTA true
    python3 examples/fleet_set_key.py --regex '^kitchen-[0-9]+$' pollSeconds 30 --dry-run

The library's `patch_fleet` does the work: a merge patch ``{key: value}`` applied to each selected
device, conditionally on the version it was selected from; when another edit (the web UI, another
script, a hand edit) lands first, the device is re-read, selected again on its new name, and
patched again, a bounded number of times. The value is JSON (``true``, ``30``, ``'"text"'``).
``iot-config patch --all`` does the same from the shell, with any patch.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from iot_config_core import (
    ConfigError,
    ConfigSummary,
    MergePatch,
    UnsupportedStoreError,
    open_store,
)
from iot_config_core.fleet import FleetOutcome, Selector, patch_fleet


def name_selector(glob: str | None, regex: re.Pattern[str] | None) -> Selector:
    """Devices whose ``deviceName`` matches a shell glob, a regular expression, or every device."""

    def selected(summary: ConfigSummary) -> bool:
        name = summary.device_name
        if regex is not None:
            return name is not None and regex.search(name) is not None
        if glob is not None:
            return name is not None and fnmatch.fnmatchcase(name, glob)
        return True

    return selected


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {exc}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"must be JSON; for text quote it: '\"{text}\"'") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("key", help="top-level key to set, e.g. enableOTA")
    parser.add_argument("value", type=_json_value, help="JSON value: true, 30 or '\"text\"'")
    parser.add_argument("--store", default="./iot-configs", help="store path or URL")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--name", metavar="GLOB", help="only devices whose deviceName matches")
    which.add_argument(
        "--regex", type=_regex, help="only devices whose deviceName matches this regex"
    )
    parser.add_argument("--dry-run", action="store_true", help="report, write nothing")
    parser.add_argument(
        "--max-attempts", type=_positive, default=5, help="tries per device (default 5)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.value is None:
        print("error: null would remove the key; use iot-config patch for that", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    retries = 0
    try:
        results = patch_fleet(
            open_store(args.store),
            MergePatch({args.key: args.value}),
            name_selector(args.name, args.regex),
            dry_run=args.dry_run,
            max_attempts=args.max_attempts,
        )
        for result in results:
            retries += result.retries
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
            summary = result.summary
            name = "" if summary.device_name is None else f"  {summary.device_name}"
            why = "" if result.error is None else f" ({result.error.message})"
            print(f"{summary.mac_address}{name}: {result.outcome}{why}")
    except ConfigError as exc:
        print(f"error: {exc.message} [{exc.code}]", file=sys.stderr)
        return 2 if isinstance(exc, UnsupportedStoreError) else 3
    summary_line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no device matched"
    print(f"{summary_line}; retries after concurrent edits: {retries}")
    return 1 if counts.get(FleetOutcome.FAILED) else 0


if __name__ == "__main__":
    sys.exit(main())
