"""Set one key on every device whose name matches, without ever overwriting a concurrent edit.

    . .venv/bin/activate          # the environment of the README's install
    echo '{"deviceName": "kitchen-1"}' | iot-config put aa-bb-cc-dd-ee-01 --create-store
    python3 examples/fleet_set_key.py --store ./iot-configs --name 'kitchen-*' enableOTA true
    python3 examples/fleet_set_key.py --regex '^kitchen-[0-9]+$' pollSeconds 30 --dry-run

Each device is read, changed and written back with ``if_match=<the ETag that was read>``: if anyone
(the web UI, another script, a hand edit) changed the config in between, the store refuses the
write with `PreconditionFailedError`, and this script re-reads and tries again, a bounded number of
times. The value is JSON (``true``, ``30``, ``'"text"'``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from iot_config_core import (
    ConfigError,
    ConfigStore,
    MacAddress,
    NotFoundError,
    PreconditionFailedError,
    UnsupportedStoreError,
    open_store,
)

Matcher = Callable[[str | None], bool]


def name_matcher(glob: str | None, regex: re.Pattern[str] | None) -> Matcher:
    """A predicate on ``deviceName``: a shell glob, a regular expression, or every device."""
    if regex is not None:
        return lambda name: name is not None and regex.search(name) is not None
    if glob is not None:
        return lambda name: name is not None and fnmatch.fnmatchcase(name, glob)
    return lambda _: True


def same_json(a: Any, b: Any) -> bool:
    """JSON equality (Python says ``True == 1``; JSON does not)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def set_key(
    store: ConfigStore,
    mac: MacAddress,
    key: str,
    value: Any,
    matches: Matcher,
    *,
    dry_run: bool,
    max_attempts: int,
) -> tuple[str, int]:
    """Update one device; returns ``(outcome, retries)``.

    The name is checked again on every re-read: a device renamed meanwhile is left alone.
    """
    for attempt in range(max_attempts):
        try:
            config = store.get(mac)
        except NotFoundError:
            return "gone", attempt
        name = config.content.get("deviceName")
        if not matches(name if isinstance(name, str) else None):
            return "no longer matches", attempt
        if key in config.content and same_json(config.content[key], value):
            return "unchanged", attempt
        if dry_run:
            return "would change", attempt
        try:
            store.put(mac, {**config.content, key: value}, if_match=config.etag)
        except PreconditionFailedError:
            continue  # someone else's write landed first: re-read and decide again
        except NotFoundError:
            return "gone", attempt
        return "changed", attempt
    return "gave up", max_attempts


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
    value = args.value
    matches = name_matcher(args.name, args.regex)
    counts: dict[str, int] = {}
    retries = 0
    try:
        store = open_store(args.store)
        for summary in store.list():
            if not matches(summary.device_name):
                continue
            outcome, retried = set_key(
                store,
                summary.mac_address,
                args.key,
                value,
                matches,
                dry_run=args.dry_run,
                max_attempts=args.max_attempts,
            )
            retries += retried
            counts[outcome] = counts.get(outcome, 0) + 1
            name = "" if summary.device_name is None else f"  {summary.device_name}"
            print(f"{summary.mac_address}{name}: {outcome}")
    except ConfigError as exc:
        print(f"error: {exc.message} [{exc.code}]", file=sys.stderr)
        return 2 if isinstance(exc, UnsupportedStoreError) else 3
    summary_line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no device matched"
    print(f"{summary_line}; retries after concurrent edits: {retries}")
    return 1 if counts.get("gave up") else 0


if __name__ == "__main__":
    sys.exit(main())
