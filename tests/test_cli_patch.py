"""``iot-config patch``, ``patch --all``, ``schema`` and ``validate`` against a store's schemas."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import test_cli
from test_cli import REPO, Cli, seed

from iot_config_core import encode_document
from iot_config_server.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE

# The CLI module's fixtures: the in-process command line and an empty store directory.
cli = test_cli.cli
store = test_cli.store

MAC1 = "aa-bb-cc-dd-ee-01"
MAC2 = "aa-bb-cc-dd-ee-02"
MAC3 = "aa-bb-cc-dd-ee-03"
SCHEMA = {"type": "object", "properties": {"pollSeconds": {"type": "integer", "maximum": 100}}}


def read(root: Path, mac: str) -> object:
    return json.loads((root / f"{mac}.json").read_bytes())


def test_patch_one_config_with_either_kind(cli: Cli, store: Path) -> None:
    seed(store, MAC1, {"deviceName": "a", "pins": [1, 2], "old": True})
    merged = cli("--store", store, "patch", "AA:BB:CC:DD:EE:01", stdin=b'{"old": null, "x": 1}')
    assert merged.status == EXIT_OK, merged.err
    assert read(store, MAC1) == {"deviceName": "a", "pins": [1, 2], "x": 1}
    assert merged.out.strip() == cli("--store", store, "get", MAC1, "--etag").err.strip()
    ops = b'[{"op": "replace", "path": "/pins/1", "value": 3}]'
    assert cli("--store", store, "patch", MAC1, stdin=ops).status == EXIT_OK
    assert read(store, MAC1) == {"deviceName": "a", "pins": [1, 3], "x": 1}


def test_patch_dry_run_prints_the_result_and_writes_nothing(cli: Cli, store: Path) -> None:
    before = seed(store, MAC1, {"deviceName": "a"})
    result = cli("--store", store, "patch", MAC1, "--dry-run", stdin=b'{"b": 2}')
    assert result.status == EXIT_OK
    assert json.loads(result.out) == {"deviceName": "a", "b": 2}
    assert "would change" in result.err
    assert (store / f"{MAC1}.json").read_bytes() == before


def test_patch_errors_are_one_line_and_write_nothing(cli: Cli, store: Path) -> None:
    before = seed(store, MAC1, {"pollSeconds": 30})
    failed = cli(
        "--store",
        store,
        "patch",
        MAC1,
        stdin=b'[{"op": "test", "path": "/pollSeconds", "value": 5}]',
    )
    assert failed.status == EXIT_FAILED
    assert failed.err == (
        "iot-config: error: operation 0 (test /pollSeconds) failed: the stored value differs "
        "[PATCH_CONFLICT]\n"
    )
    assert cli("--store", store, "patch", MAC1, "--json-patch", stdin=b"{}").status == EXIT_FAILED
    assert cli("--store", store, "patch", MAC1, "--if-match", "abc", stdin=b"{}").status == 1
    assert cli("--store", store, "patch", stdin=b"{}").status == EXIT_USAGE
    assert cli("--store", store, "patch", MAC1, "--name", "x", stdin=b"{}").status == EXIT_USAGE
    assert (store / f"{MAC1}.json").read_bytes() == before


def test_patch_all_selects_by_filters_and_reports(cli: Cli, store: Path, tmp_path: Path) -> None:
    seed(store, MAC1, {"deviceName": "kitchen-1", "enableOTA": False})
    seed(store, MAC2, {"deviceName": "kitchen-2", "enableOTA": True})
    hall = seed(store, MAC3, {"deviceName": "hall", "enableOTA": False})
    patch = tmp_path / "patch.json"
    patch.write_text('{"enableOTA": true}')
    result = cli("--store", store, "patch", "--all", patch, "--name", "kitchen-*")
    assert result.status == EXIT_OK, result.err
    assert result.out.splitlines() == [
        f"changed            {MAC1}  kitchen-1",
        "changed 1, unchanged 1, failed 0",
    ]
    assert (store / f"{MAC3}.json").read_bytes() == hall
    by_mac = cli(
        "--store",
        store,
        "patch",
        "--all",
        "--mac-regex",
        "03$",
        "--ota",
        "no",
        "--dry-run",
        "--json",
        stdin=b'{"enableOTA": true}',
    )
    report = json.loads(by_mac.out)
    assert report["counts"] == {"would change": 1}
    assert [d["mac_address"] for d in report["devices"]] == [MAC3]
    assert (store / f"{MAC3}.json").read_bytes() == hall


def test_patch_all_reports_devices_the_schema_refuses(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    seed(store, MAC1, {"deviceModel": "sensor", "pollSeconds": 30})
    seed(store, MAC2, {"pollSeconds": 30})
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    assert cli("--store", store, "schema", "put", "sensor", schema).status == EXIT_OK
    result = cli("--store", store, "patch", "--all", stdin=b'{"pollSeconds": 500}')
    assert result.status == EXIT_FAILED
    assert (
        f"failed             {MAC1}: /pollSeconds: 500 is greater than the maximum of 100 "
        "[SCHEMA_VIOLATION]"
    ) in result.out
    assert result.out.splitlines()[-1] == "changed 1, unchanged 0, failed 1"
    assert read(store, MAC1) == {"deviceModel": "sensor", "pollSeconds": 30}


def test_schema_commands_and_the_store_report(cli: Cli, store: Path, tmp_path: Path) -> None:
    seed(store, MAC1, {"deviceModel": "sensor", "pollSeconds": 500})  # before the schema
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    put = cli("--store", store, "schema", "put", "sensor", schema)
    assert put.status == EXIT_OK, put.err
    assert cli("--store", store, "schema", "list").out == "sensor\n"
    got = cli("--store", store, "schema", "get", "sensor")
    assert json.loads(got.out) == SCHEMA
    assert got.err == f"enforced, ETag {put.out.strip()}\n"
    assert cli("--store", store, "list").out.count("\n") == 2  # the schema is not a config
    report = cli("--store", store, "validate")
    assert report.status == EXIT_FAILED
    assert report.out.splitlines() == [
        f"invalid  {MAC1}: schema 'sensor': /pollSeconds: 500 is greater than the maximum of 100",
        "0 valid, 1 violating, 0 violating relaxed schemas",
    ]
    bad = cli("--store", store, "schema", "put", "loose", stdin=b'{"type": 5}')
    assert bad.status == EXIT_FAILED
    assert "[INVALID_SCHEMA]" in bad.err
    assert cli("--store", store, "schema", "delete", "sensor").status == EXIT_OK
    assert cli("--store", store, "validate").status == EXIT_OK


def test_patch_all_shows_progress_on_a_terminal(store: Path, tmp_path: Path) -> None:
    for i in range(3):
        (store / f"aa-bb-cc-dd-ee-0{i}.json").write_bytes(encode_document({"n": i}))
    patch = tmp_path / "patch.json"
    patch.write_text('{"x": 1}')
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iot_config_server.cli",
                "--store",
                str(store),
                "patch",
                "--all",
                str(patch),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            cwd=REPO,
        )
        out, _ = proc.communicate(timeout=60)
        shown = os.read(leader, 4096)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == EXIT_OK
    assert b"patching 3/3" in shown
    assert out.decode().splitlines()[-1] == "changed 3, unchanged 0, failed 0"
