"""examples/import_legacy.py, run as a real process on real directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import iot_config_core
from iot_config_core import MacAddress, encode_document, open_store

REPO = Path(iot_config_core.__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "import_legacy.py"

VALID_1 = {"deviceName": "kitchen", "enableOTA": True}
VALID_2 = {"deviceName": "hall", "n": [1, 2, {"x": None}]}
SAME = {"deviceName": "already there"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    directory = tmp_path / "legacy"
    directory.mkdir()
    files: dict[str, bytes] = {
        "AA:BB:CC:DD:EE:01.json": json.dumps(VALID_1).encode(),  # compact, colons, upper case
        "aabbccddee02.json": json.dumps(VALID_2, indent=4).encode(),
        "aa-bb-cc-dd-ee-03.json": b'{\n  "deviceName": "broken",\n}\n',
        "not-a-mac.json": b"{}",
        "aa-bb-cc-dd-ee-04.txt": b"{}",
        "aa-bb-cc-dd-ee-05.json": json.dumps({"blob": "x" * 5000}).encode(),
        "AABB.CCDD.EE06.json": b'{"a": 1, "a": 2}',
        "aa-bb-cc-dd-ee-07.json": json.dumps(SAME).encode(),
        "aa-bb-cc-dd-ee-08.json": json.dumps({"deviceName": "from legacy"}).encode(),
        "aa:bb:cc:dd:ee:09.json": b"[1, 2]",
        ".hidden.json": b"ignored",
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / "subdir.json").mkdir()
    return directory


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "store"
    store = open_store(str(directory), create=True)
    store.put("aa-bb-cc-dd-ee-07", SAME)
    store.put("aa-bb-cc-dd-ee-08", {"deviceName": "edited in the web UI"})
    return directory


def report(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {f["file"]: f for f in json.loads(result.stdout)["files"]}


def test_import_reports_and_stores_exactly_the_valid_files(legacy: Path, store_dir: Path) -> None:
    result = run(str(legacy), str(store_dir), "--max-bytes", "1024", "--json")
    assert result.returncode == 1, result.stderr
    files = report(result)
    assert {name: f["status"] for name, f in files.items()} == {
        "AA:BB:CC:DD:EE:01.json": "imported",
        "aabbccddee02.json": "imported",
        "aa-bb-cc-dd-ee-03.json": "rejected",
        "not-a-mac.json": "rejected",
        "aa-bb-cc-dd-ee-04.txt": "rejected",
        "aa-bb-cc-dd-ee-05.json": "rejected",
        "AABB.CCDD.EE06.json": "rejected",
        "aa-bb-cc-dd-ee-07.json": "unchanged",
        "aa-bb-cc-dd-ee-08.json": "skipped",
        "aa:bb:cc:dd:ee:09.json": "rejected",
    }
    assert files["AA:BB:CC:DD:EE:01.json"]["mac_address"] == "aa-bb-cc-dd-ee-01"
    assert files["aa-bb-cc-dd-ee-03.json"]["code"] == "INVALID_DOCUMENT"
    assert "line 3, column 1" in files["aa-bb-cc-dd-ee-03.json"]["reason"]
    assert files["not-a-mac.json"]["code"] == "INVALID_MAC"
    assert files["not-a-mac.json"]["mac_address"] is None
    assert "does not end in .json" in files["aa-bb-cc-dd-ee-04.txt"]["reason"]
    assert files["aa-bb-cc-dd-ee-05.json"]["code"] == "DOCUMENT_TOO_LARGE"
    assert "limit of 1024 bytes" in files["aa-bb-cc-dd-ee-05.json"]["reason"]
    assert files["AABB.CCDD.EE06.json"]["reason"].startswith("duplicate key 'a' at line ")
    assert "different config" in files["aa-bb-cc-dd-ee-08.json"]["reason"]
    assert "object" in files["aa:bb:cc:dd:ee:09.json"]["reason"]
    assert json.loads(result.stdout)["counts"] == {
        "imported": 2,
        "unchanged": 1,
        "skipped": 1,
        "rejected": 6,
    }

    store = open_store(str(store_dir))
    assert store.get("aa:bb:cc:dd:ee:01").content == VALID_1
    assert store.get_raw("aa:bb:cc:dd:ee:02").data == encode_document(VALID_2)  # re-encoded
    assert store.get("aa:bb:cc:dd:ee:08").content == {"deviceName": "edited in the web UI"}
    imported = {s.mac_address for s in store.list()}
    assert imported == {MacAddress.parse(f"aa:bb:cc:dd:ee:0{i}") for i in (1, 2, 7, 8)}
    assert sorted(p.name for p in store_dir.iterdir() if not p.name.startswith(".")) == sorted(
        f"{m}.json" for m in imported
    )


def test_the_example_and_the_cli_follow_one_policy(legacy: Path, store_dir: Path) -> None:
    example = report(run(str(legacy), str(store_dir), "--max-bytes", "1024", "--json", "--dry-run"))
    cli = subprocess.run(
        [
            *(sys.executable, "-m", "iot_config_server.cli", "--store", str(store_dir)),
            *("--max-document-bytes", "1024", "import", str(legacy), "--dry-run", "--json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    answer = json.loads(cli.stdout)
    by_cli = dict.fromkeys(answer["imported"], "imported")
    by_cli |= dict.fromkeys(answer["unchanged"], "unchanged")
    by_cli |= {f["file"]: "skipped" for f in answer["skipped"]}
    by_cli |= {f["file"]: "rejected" for f in answer["rejected"]}
    assert by_cli == {name: f["status"] for name, f in example.items()}


def test_human_report_and_second_run_is_unchanged(legacy: Path, store_dir: Path) -> None:
    first = run(str(legacy), str(store_dir))
    assert first.returncode == 1
    lines = first.stdout.splitlines()
    assert lines[-1] == "3 imported, 1 unchanged, 1 skipped, 5 rejected"  # 5 KB is fine by default
    assert any(
        line.startswith("imported   aa-bb-cc-dd-ee-01  AA:BB:CC:DD:EE:01.json") for line in lines
    )
    assert any(line.startswith("rejected   -                  not-a-mac.json: ") for line in lines)
    rejected = [line[30:].partition(": ")[0] for line in lines if line.startswith("rejected")]
    assert len(rejected) == 5
    for name in rejected:
        (legacy / name).unlink()
    second = run(str(legacy), str(store_dir))
    assert second.returncode == 0, second.stdout
    assert second.stdout.splitlines()[-1] == "0 imported, 4 unchanged, 1 skipped, 0 rejected"
    assert second.stderr == ""


def test_dry_run_writes_nothing(legacy: Path, store_dir: Path) -> None:
    before = sorted(p.name for p in store_dir.iterdir())
    result = run(str(legacy), str(store_dir), "--dry-run", "--overwrite", "--json")
    assert result.returncode == 1
    files = report(result)
    assert files["AA:BB:CC:DD:EE:01.json"]["status"] == "imported"
    assert files["aa-bb-cc-dd-ee-08.json"]["status"] == "imported"
    assert json.loads(result.stdout)["dry_run"] is True
    assert sorted(p.name for p in store_dir.iterdir()) == before
    store = open_store(str(store_dir))
    assert store.get("aa:bb:cc:dd:ee:08").content == {"deviceName": "edited in the web UI"}


def test_overwrite_replaces_differing_and_corrupt_configs(legacy: Path, store_dir: Path) -> None:
    (store_dir / "aa-bb-cc-dd-ee-01.json").write_bytes(b"{corrupt")
    result = run(str(legacy), str(store_dir), "--overwrite", "--json")
    files = report(result)
    assert files["aa-bb-cc-dd-ee-08.json"]["status"] == "imported"
    assert files["aa-bb-cc-dd-ee-08.json"]["reason"] == "replaced the stored config"
    assert files["AA:BB:CC:DD:EE:01.json"]["status"] == "imported"
    store = open_store(str(store_dir))
    assert store.get("aa:bb:cc:dd:ee:08").content == {"deviceName": "from legacy"}
    assert store.get("aa:bb:cc:dd:ee:01").content == VALID_1


def test_corrupt_stored_config_needs_overwrite(legacy: Path, store_dir: Path) -> None:
    (store_dir / "aa-bb-cc-dd-ee-01.json").write_bytes(b"{corrupt")
    files = report(run(str(legacy), str(store_dir), "--json"))
    assert files["AA:BB:CC:DD:EE:01.json"]["status"] == "skipped"
    assert "overwrite" in files["AA:BB:CC:DD:EE:01.json"]["reason"]
    assert (store_dir / "aa-bb-cc-dd-ee-01.json").read_bytes() == b"{corrupt"


def test_two_spellings_of_one_mac_are_both_rejected(tmp_path: Path) -> None:
    """Which spelling should win is a guess, even when they agree: a human removes one."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "AA:BB:CC:DD:EE:01.json").write_bytes(b'{"a": 1}')
    (legacy / "aabbccddee01.json").write_bytes(b'{"a":1}')
    (legacy / "000000000002.json").write_bytes(b'{"a": 2}')
    result = run(str(legacy), str(tmp_path / "store"), "--create", "--json")
    files = report(result)
    for name in ("AA:BB:CC:DD:EE:01.json", "aabbccddee01.json"):
        assert files[name]["status"] == "rejected"
        assert files[name]["code"] == "DUPLICATE_MAC"
    assert "aabbccddee01.json" in files["AA:BB:CC:DD:EE:01.json"]["reason"]
    assert files["000000000002.json"]["status"] == "imported"
    assert result.returncode == 1
    store = open_store(str(tmp_path / "store"))
    assert [str(s.mac_address) for s in store.list()] == ["00-00-00-00-00-02"]


def test_missing_store_root_is_an_error_not_a_traceback(legacy: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run(str(legacy), str(missing))
    assert result.returncode == 3
    assert result.stderr.startswith("error: ")
    assert "STORE_UNAVAILABLE" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()


def test_missing_legacy_dir_and_bad_arguments(tmp_path: Path) -> None:
    result = run(str(tmp_path / "none"), str(tmp_path / "store"))
    assert result.returncode == 2
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    usage = run(str(tmp_path), str(tmp_path), "--max-bytes", "0")
    assert usage.returncode == 2
    assert "--max-bytes" in usage.stderr
