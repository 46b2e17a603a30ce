"""Helpers of the reliability suite: run mode, store snapshots, private mounts.

Servers, ports and HTTP calls come from ``tests/support.py``, shared with the other tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

FULL = os.environ.get("IOT_CONFIG_RELIABILITY", "").lower() == "full"
#: Server log level: a load test's per-write INFO lines would bury what the test is after.
QUIET = {"IOT_CONFIG_LOG_LEVEL": "WARNING"}
#: ``python run_server.py STORE DELAY --host H --port P``: the app over a latency-adding store.
SLOW_SERVER = (str(Path(__file__).with_name("run_server.py")),)


def scaled(short: float, full: float) -> float:
    """The short-mode or the full-mode value of a bound (time, count, rounds)."""
    return full if FULL else short


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), lock files excluded.

    Lock files are created empty on first write attempt and hold no data; everything else,
    including any stray temp file, is part of the comparison.
    """
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".locks/"):
            files[rel] = path.read_bytes()
    return files


def temp_files(root: Path) -> list[str]:
    """Temp files a writer left in ``root`` (the store's temp names end in ``.tmp``)."""
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp"))


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    """A private tmpfs of ``size`` at ``path`` for the duration; skip when mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={size},mode=0755",
            f"iotcfg-{uuid.uuid4().hex[:8]}",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def remount(path: Path, mode: str) -> None:
    """Remount the tmpfs at ``path`` ``ro`` or ``rw``: read-only binds stop root, chmod does not."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)
