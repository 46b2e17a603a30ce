"""The CLI's history commands: history, show, diff, rollback, undelete (in-process, real dirs)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Protocol

import attrs
import jsonpatch
import pytest

from iot_config_core import open_store
from iot_config_core.history import os_user
from iot_config_server.cli import EXIT_FAILED, EXIT_OK, main

MAC = "aa-bb-cc-dd-ee-01"
GOOD = {"deviceName": "kitchen", "enableOTA": False}
BAD = {"deviceName": "kitchen", "enableOTA": True, "url": "http://bad"}


@attrs.frozen
class Result:
    status: int
    out: str
    err: str


class Cli(Protocol):
    def __call__(
        self, *argv: str, stdin: object = None, env: dict[str, str] | None = None
    ) -> Result: ...


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, store: Path) -> Cli:
    def run(*argv: str, stdin: object = None, env: dict[str, str] | None = None) -> Result:
        if stdin is not None:
            data = json.dumps(stdin).encode()
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        capsys.readouterr()
        status = main(["--store", str(store), *argv], environ=env or {})
        out, err = capsys.readouterr()
        return Result(status, out, err)

    return run


def test_history_show_diff_rollback(cli: Cli, store: Path) -> None:
    good = cli("put", MAC, stdin=GOOD).out.strip()
    bad = cli("put", MAC, stdin=BAD).out.strip()
    table = cli("history", MAC)
    assert table.status == EXIT_OK
    lines = table.out.splitlines()
    assert lines[0].split()[:3] == ["ETAG", "SAVED", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == [bad, good]
    assert all(" cli" in line for line in lines[1:])
    versions = json.loads(cli("history", MAC, "--json").out)["versions"]
    assert [(v["etag"], v["source"], v["author"]) for v in versions] == [
        (bad, "cli", os_user()),
        (good, "cli", os_user()),
    ]
    assert json.loads(cli("show", MAC, good).out) == GOOD
    patch = json.loads(cli("diff", MAC, good).out)
    assert jsonpatch.apply_patch(GOOD, patch) == BAD
    assert json.loads(cli("diff", MAC, bad, good).out) == jsonpatch.make_patch(BAD, GOOD).patch
    stale = cli("rollback", MAC, good, "--if-match", good)
    assert stale.status == EXIT_FAILED
    assert "PRECONDITION_FAILED" in stale.err
    rolled = cli("rollback", MAC, good, "--if-match", bad)
    assert (rolled.status, rolled.out.strip()) == (EXIT_OK, good)
    assert open_store(str(store)).get(MAC).content == GOOD


def test_undelete_restores_the_last_version(cli: Cli, store: Path) -> None:
    etag = cli("put", MAC, stdin=GOOD).out.strip()
    assert cli("delete", MAC).status == EXIT_OK
    assert cli("history", MAC).out.splitlines()[1].startswith("(deleted)")
    restored = cli("undelete", MAC)
    assert (restored.status, restored.out.strip()) == (EXIT_OK, etag)
    again = cli("undelete", MAC)
    assert again.status == EXIT_FAILED
    assert "ALREADY_EXISTS" in again.err


def test_history_errors_are_one_line(cli: Cli) -> None:
    missing = cli("history", MAC)
    assert missing.status == EXIT_FAILED
    assert missing.err.count("\n") == 1
    assert "NOT_FOUND" in missing.err
    cli("put", MAC, stdin=GOOD)
    unknown = cli("show", MAC, "0" * 32)
    assert unknown.status == EXIT_FAILED
    assert "VERSION_NOT_FOUND" in unknown.err


def test_history_limit_comes_from_the_environment(cli: Cli) -> None:
    env = {"IOT_CONFIG_HISTORY_LIMIT": "2"}
    for n in range(4):
        cli("put", MAC, stdin={"n": n}, env=env)
    assert len(json.loads(cli("history", MAC, "--json", env=env).out)["versions"]) == 2
    off = {"IOT_CONFIG_HISTORY_LIMIT": "0"}
    assert json.loads(cli("history", MAC, "--json", env=off).out)["versions"] == []
