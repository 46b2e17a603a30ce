"""A tiny timing harness shared by the benchmark scripts in this directory.

Benchmarks here report *ratios* against a baseline (the physical floor: the bare OS or stdlib work
that any implementation must do) measured in the same run, on the same data, interleaved with the
subject so that drift in the machine (page cache, CPU frequency, a neighbour's load) hits both
alike. Absolute times are printed too, but only the ratios are comparable between machines.

Nothing here asserts on speed: a benchmark reports, a human judges.

Usage from a script in this directory (run as ``python tests/benchmarks/<script>.py``, so this
module is importable as ``_harness``)::

    report = Report("core")
    timings = measure({"floor": floor_fn, "get": get_fn}, repeat=200)
    report.add("get", timings["get"], baseline=timings["floor"], target=1.5)
    report.print()
    report.write_json(path)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "Row", "Timing", "common_arguments", "measure"]


@dataclass(frozen=True)
class Timing:
    """Per-operation times (seconds) from ``repeat`` samples of one callable."""

    name: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def measure(
    subjects: Mapping[str, Callable[[], object]],
    *,
    repeat: int,
    per_call: int = 1,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
    max_seconds: float | None = None,
) -> dict[str, Timing]:
    """Time each callable ``repeat`` times, round-robin, and return per-operation timings.

    ``per_call`` is how many operations one call performs (a call that gets 100 documents has
    ``per_call=100``), so the samples are per operation. ``setup`` runs untimed before every call
    (e.g. to make a fresh object for a cold measurement). The garbage collector is paused while a
    call is timed so a collection triggered by one subject is not billed to another. Stops early,
    after at least 3 rounds, once ``max_seconds`` of wall time have passed.
    """
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for fn in subjects.values():
        for _ in range(warmup):
            if setup is not None:
                setup()
            fn()
    started = time.perf_counter()
    gc_was_enabled = gc.isenabled()
    try:
        for round_number in range(repeat):
            for name, fn in subjects.items():
                if setup is not None:
                    setup()
                gc.collect()
                gc.disable()
                t0 = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - t0
                if gc_was_enabled:
                    gc.enable()
                samples[name].append(elapsed / per_call)
            if (
                max_seconds is not None
                and round_number >= 2
                and time.perf_counter() - started > max_seconds
            ):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(name, tuple(values)) for name, values in samples.items()}


@dataclass(frozen=True)
class Row:
    """One line of a report: a measured quantity, optionally against a baseline and a target."""

    name: str
    value: float
    unit: str
    p99: float | None = None
    samples: int | None = None
    baseline_name: str | None = None
    baseline: float | None = None
    target: float | None = None
    note: str = ""
    paired_ratio: float | None = None  # median of the per-round ratios (`Report.add`, paired)

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the target holds: a ratio target when there is a baseline, else a value cap."""
        if self.target is None:
            return None
        measured = self.ratio if self.baseline is not None else self.value
        return measured is not None and measured <= self.target


def durable_write(directory: Path, file_name: str, data: bytes) -> None:
    """The floor of every durable write: temp file, write, fsync, rename, fsync the directory."""
    temp = directory / f".{file_name}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, directory / file_name)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return _format_time(value) if unit == "s" else f"{value:.3g} {unit}"


@dataclass
class Report:
    """Rows collected by a benchmark script, printed as a table and optionally saved as JSON."""

    title: str
    parameters: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def add(
        self,
        name: str,
        timing: Timing,
        *,
        baseline: Timing | None = None,
        target: float | None = None,
        note: str = "",
        paired: bool = False,
    ) -> Row:
        """Add a timed row (median per operation), as a ratio to ``baseline`` when given.

        ``paired``: the two were timed round-robin by one `measure`, so round i of each ran side
        by side; the ratio is then the median of the per-round ratios, which a disk whose flush
        time drifts during the run (a VM's) moves far less than the ratio of the medians.
        """
        pairs = None
        if paired and baseline is not None and len(baseline.samples) == len(timing.samples):
            pairs = [a / b for a, b in zip(timing.samples, baseline.samples, strict=True) if b]
        row = Row(
            name=name,
            value=timing.median,
            unit="s",
            p99=timing.p99,
            samples=len(timing.samples),
            baseline_name=None if baseline is None else baseline.name,
            baseline=None if baseline is None else baseline.median,
            target=target,
            note=note,
            paired_ratio=statistics.median(pairs) if pairs else None,
        )
        self.rows.append(row)
        return row

    def add_value(
        self, name: str, value: float, unit: str, *, target: float | None = None, note: str = ""
    ) -> Row:
        """Add an untimed quantity (memory, a count), checked against ``target`` as a cap."""
        row = Row(name=name, value=value, unit=unit, target=target, note=note)
        self.rows.append(row)
        return row

    def table(self) -> str:
        header = ("benchmark", "median", "p99", "baseline", "base median", "ratio", "target", "met")
        lines = [header]
        for row in self.rows:
            target = "-"
            if row.target is not None:
                target = (
                    f"<= {row.target:g}x"
                    if row.baseline is not None
                    else f"<= {_format(row.target, row.unit)}"
                )
            lines.append(
                (
                    row.name,
                    _format(row.value, row.unit),
                    _format(row.p99, row.unit),
                    row.baseline_name or "-",
                    _format(row.baseline, row.unit),
                    "-" if row.ratio is None else f"{row.ratio:.2f}x",
                    target,
                    {None: "-", True: "yes", False: "NO"}[row.met],
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        rendered = [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines
        ]
        rendered.insert(1, "  ".join("-" * width for width in widths))
        notes = [f"  {row.name}: {row.note}" for row in self.rows if row.note]
        return "\n".join([*rendered, *(["", "notes:", *notes] if notes else [])])

    def print(self) -> None:
        params = ", ".join(f"{key}={value}" for key, value in self.parameters.items())
        print(f"\n== {self.title} ({params})", flush=True)
        print(self.table(), flush=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "parameters": self.parameters,
            "rows": [{**asdict(row), "ratio": row.ratio, "met": row.met} for row in self.rows],
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")


def common_arguments(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark script accepts: ``--quick``, ``--json PATH``, ``--dir DIR``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--dir", type=Path, metavar="DIR", help="make scratch directories here (default: $TMPDIR)"
    )
    return parser
