"""Shared fixtures of the reliability suite: run mode, recorded figures, store snapshots, mounts.

Every test here has a short version (collected by the default ``pytest tests`` run, all of them
together well under a minute) and a long one, selected by ``IOT_CONFIG_RELIABILITY=full`` (what
``nox -s reliability`` sets). The figures each test measures are printed at the end of the run and,
when ``IOT_CONFIG_RELIABILITY_RESULTS`` names a file, written there as JSON for
``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .support import FULL

# name -> {"value": ..., "command": ...}; filled by the `figure` fixture, printed at the end.
_FIGURES: dict[str, dict[str, Any]] = {}

Figure = Callable[[str, Any], None]


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """Record one measured figure under the test's name, with the command that reproduces it."""
    node = request.node.nodeid

    def record(name: str, value: Any) -> None:
        mode = "IOT_CONFIG_RELIABILITY=full " if FULL else ""
        _FIGURES[f"{request.node.name}: {name}"] = {
            "value": value,
            "mode": "full" if FULL else "short",
            "command": f"{mode}python3 -m pytest '{node}'",
        }

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures (they are the point of this suite) and save them if asked to."""
    if not _FIGURES:
        return
    terminalreporter.section(f"reliability figures ({'full' if FULL else 'short'} mode)")
    for name, item in sorted(_FIGURES.items()):
        terminalreporter.write_line(f"{name} = {item['value']}")
    target = os.environ.get("IOT_CONFIG_RELIABILITY_RESULTS")
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        old: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        old.update(_FIGURES)
        path.write_text(json.dumps(old, indent=2, sort_keys=True, default=str) + "\n")
