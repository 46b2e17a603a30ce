"""The legacy-import policy of `iot_config_core.legacy`, on real directories and a real store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_config_core import DocumentLimits, MacAddress, open_store
from iot_config_core.legacy import DUPLICATE_MAC, Checked, FileReport, LegacyDirectory, Outcome

# A few MACs, so that generated directories often hold two spellings of one of them.
MACS = [MacAddress(0x02_00_00_00_00_00 + i) for i in range(4)]
SPELLERS: list[Callable[[MacAddress], str]] = [
    str,
    lambda m: m.with_separator(":", upper=True),
    lambda m: m.with_separator(""),
    lambda m: m.with_separator("-", upper=True),
]
SPELLINGS = st.sampled_from(SPELLERS)
CONTENTS = st.sampled_from(
    [b'{"deviceName": "a"}', b'{"deviceName": "b", "n": [1, 2]}', b"{", b"[1]", b"", b"x" * 300]
)


@st.composite
def directories(draw: st.DrawFn) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["mac", "mac", "mac", "stray", "txt"]))
        mac = draw(st.sampled_from(MACS))
        if kind == "mac":
            name = f"{draw(SPELLINGS)(mac)}.json"
        elif kind == "stray":
            name = "notes.json"
        else:
            name = f"{mac}.txt"
        files[name] = draw(CONTENTS)
    return files


def make_directory(root: Path, files: dict[str, bytes]) -> LegacyDirectory:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / ".hidden.json").write_bytes(b"{}")  # never part of the directory
    (root / "sub.json").mkdir()
    return LegacyDirectory.open(str(root))


LIMITS = DocumentLimits(max_bytes=256)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=directories(), overwrite=st.booleans())
def test_import_rejects_exactly_what_check_rejects(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes], overwrite: bool
) -> None:
    base = tmp_path_factory.mktemp("legacy")
    directory = make_directory(base / "legacy", files)
    assert directory.names == tuple(sorted(files))
    checked = list(directory.check(LIMITS))
    store = open_store(str(base / "store"), create=True, limits=LIMITS)
    store.put(MACS[0], {"deviceName": "already stored"})
    first = list(directory.import_into(store, overwrite=overwrite))

    assert [r.file for r in first] == [c.file for c in checked]
    rejected_by_check = {c.file for c in checked if isinstance(c, FileReport)}
    assert {r.file for r in first if r.outcome is Outcome.REJECTED} == rejected_by_check
    for item in checked:
        if isinstance(item, Checked):
            current = store.get_raw(item.mac).data
            outcome = next(r.outcome for r in first if r.file == item.file)
            # Written, or left alone because something else was stored and overwrite was off.
            assert (current == item.data) == (outcome is not Outcome.SKIPPED)
    spellings: dict[MacAddress, int] = {}
    for item in checked:
        if isinstance(item, Checked):
            spellings[item.mac] = spellings.get(item.mac, 0) + 1
    assert all(n == 1 for n in spellings.values())  # duplicates never reach the store

    again = list(directory.import_into(store, overwrite=overwrite))
    assert all(r.outcome is not Outcome.IMPORTED for r in again)


def test_two_spellings_of_one_mac_are_rejected_even_when_they_agree(tmp_path: Path) -> None:
    directory = make_directory(
        tmp_path / "legacy",
        {"AA:BB:CC:DD:EE:01.json": b'{"a": 1}', "aabbccddee01.json": b'{"a": 1}'},
    )
    reports = list(directory.check(DocumentLimits()))
    assert [(r.file, r.code) for r in reports if isinstance(r, FileReport)] == [
        ("AA:BB:CC:DD:EE:01.json", DUPLICATE_MAC),
        ("aabbccddee01.json", DUPLICATE_MAC),
    ]


def test_dry_run_writes_nothing_and_reports_what_would_happen(tmp_path: Path) -> None:
    directory = make_directory(tmp_path / "legacy", {"AA:BB:CC:DD:EE:01.json": b'{"a": 1}'})
    store = open_store(str(tmp_path / "store"), create=True)
    (report,) = directory.import_into(store, dry_run=True)
    assert report.outcome is Outcome.IMPORTED
    assert store.list() == []
