"""Shared fixtures of the reliability suite: run mode, recorded figures, store snapshots, mounts.

Every test here has a short version (collected by the default ``pytest tests`` run, all of them
together well under a minute) and a long one, selected by ``IOT_CONFIG_RELIABILITY=full`` (what
``nox -s reliability`` sets). The figures each test measures are printed at the end of the run and,
when ``IOT_CONFIG_RELIABILITY_RESULTS`` names a file, written there as JSON for
``docs/reliability.md``. A module marked ``pytest.mark.cases("name")`` also gets the figure
``name``: how many of its tests passed (the cases it tried and survived).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from .support import FULL

# name -> {"value": ..., "command": ...}; filled by the `figure` fixture, printed at the end.
_FIGURES: dict[str, dict[str, Any]] = {}
# figure name -> passed tests, and the module they are in; for modules marked `cases`.
_CASES: Counter[str] = Counter()
_CASES_WHERE: dict[str, str] = {}

Figure = Callable[[str, Any], None]


def _record(name: str, value: Any, node: str) -> None:
    mode = "IOT_CONFIG_RELIABILITY=full " if FULL else ""
    _FIGURES[name] = {
        "value": value,
        "mode": "full" if FULL else "short",
        "command": f"{mode}python3 -m pytest '{node}'",
    }


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """Record one measured figure under the test's name, with the command that reproduces it."""
    return lambda name, value: _record(f"{request.node.name}: {name}", value, request.node.nodeid)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cases(name): report how many of the module's tests passed as figure `name`"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    marker = item.get_closest_marker("cases")
    if marker is not None and report.when == "call" and report.passed:
        _CASES[marker.args[0]] += 1
        _CASES_WHERE[marker.args[0]] = item.nodeid.partition("::")[0]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures (they are the point of this suite) and save them if asked to."""
    for name, passed in _CASES.items():
        _record(name, passed, _CASES_WHERE[name])
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
