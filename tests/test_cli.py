"""The ``iot-config`` command line, driven through its real entry point on real directories."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Protocol

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iot_config_core
import iot_config_server
from iot_config_core import MacAddress, compute_etag, encode_document
from iot_config_server.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    build_parser,
    main,
)
from iot_config_server.settings import Settings

REPO = Path(__file__).resolve().parent.parent
MAC1 = "aa-bb-cc-dd-ee-01"
MAC2 = "aa-bb-cc-dd-ee-02"
DOC1 = {"deviceName": "kitchen", "deviceEntityId": "light.kitchen", "enableOTA": False}
DOC2 = {"deviceName": "hall", "enableOTA": True, "pins": [1, 2, 3]}


@attrs.frozen
class Result:
    status: int
    out: str
    err: str


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


class Cli(Protocol):
    def __call__(
        self, *argv: str | Path, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> Result: ...


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run ``main(argv)`` in-process with an empty environment; optional bytes on stdin."""

    def run(
        *argv: str | Path, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> Result:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        status = main([str(a) for a in argv], environ=env or {})
        out, err = capsys.readouterr()
        return Result(status, out, err)

    return run


def write_doc(path: Path, content: object) -> bytes:
    data = json.dumps(content).encode()
    path.write_bytes(data)
    return data


def stored_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in {".locks", ".history"})


def seed(root: Path, mac: str, content: dict[str, object]) -> bytes:
    data = encode_document(content)
    (root / f"{mac}.json").write_bytes(data)
    return data


# -- put / get / delete ---------------------------------------------------------------------------


def test_put_then_get_returns_stored_bytes_and_etag(cli: Cli, store: Path, tmp_path: Path) -> None:
    source = tmp_path / "doc.json"
    write_doc(source, DOC1)
    put = cli("--store", store, "put", "AA:BB:CC:DD:EE:01", source)
    assert put.status == EXIT_OK, put.err
    stored = (store / f"{MAC1}.json").read_bytes()
    assert stored == encode_document(DOC1)
    assert put.out.strip() == compute_etag(stored)

    got = cli("--store", store, "get", "aabb.ccdd.ee01", "--etag")
    assert got.status == EXIT_OK
    assert got.out.encode() == stored
    assert got.err.strip() == compute_etag(stored)


def test_put_reads_stdin_and_global_options_work_after_the_subcommand(
    cli: Cli, store: Path
) -> None:
    result = cli("put", MAC2, "-", "--store", store, stdin=json.dumps(DOC2).encode())
    assert result.status == EXIT_OK, result.err
    assert json.loads((store / f"{MAC2}.json").read_bytes()) == DOC2


def test_put_if_match_stale_fails_and_leaves_the_document(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    original = seed(store, MAC1, DOC1)
    source = tmp_path / "new.json"
    write_doc(source, DOC2)
    stale = cli("--store", store, "put", MAC1, source, "--if-match", "0" * 32)
    assert stale.status == EXIT_FAILED
    assert "PRECONDITION_FAILED" in stale.err
    assert compute_etag(original) in stale.err  # the current ETag, so a script can re-read
    assert (store / f"{MAC1}.json").read_bytes() == original

    fresh = cli("--store", store, "put", MAC1, source, "--if-match", f'"{compute_etag(original)}"')
    assert fresh.status == EXIT_OK, fresh.err
    assert json.loads((store / f"{MAC1}.json").read_bytes()) == DOC2


def test_put_create_only_refuses_an_existing_config(cli: Cli, store: Path, tmp_path: Path) -> None:
    original = seed(store, MAC1, DOC1)
    source = tmp_path / "new.json"
    write_doc(source, DOC2)
    result = cli("--store", store, "put", MAC1, source, "--create-only")
    assert result.status == EXIT_FAILED
    assert "ALREADY_EXISTS" in result.err
    assert (store / f"{MAC1}.json").read_bytes() == original
    created = cli("--store", store, "put", MAC2, source, "--create-only")
    assert created.status == EXIT_OK


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"a": 1,}', "INVALID_DOCUMENT"),
        (b'{"a": 1, "a": 2}', "INVALID_DOCUMENT"),
        (b"[1, 2]", "INVALID_DOCUMENT"),
        (b'{"a": NaN}', "INVALID_DOCUMENT"),
        (b"\xff\xfe{}", "INVALID_DOCUMENT"),
    ],
)
def test_put_rejects_invalid_documents_and_writes_nothing(
    cli: Cli, store: Path, payload: bytes, code: str
) -> None:
    result = cli("--store", store, "put", MAC1, stdin=payload)
    assert result.status == EXIT_FAILED
    assert code in result.err
    assert result.err.count("\n") == 1  # one clear line, no traceback
    assert stored_names(store) == []


def test_put_oversized_document_is_refused(cli: Cli, store: Path, tmp_path: Path) -> None:
    source = tmp_path / "big.json"
    write_doc(source, {"blob": "x" * 500})
    result = cli("--store", store, "--max-document-bytes", "100", "put", MAC1, source)
    assert result.status == EXIT_FAILED
    assert "DOCUMENT_TOO_LARGE" in result.err
    assert "100 bytes" in result.err
    assert stored_names(store) == []


def test_put_limit_applies_to_the_stored_pretty_printed_form(cli: Cli, store: Path) -> None:
    content = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    compact = json.dumps(content, separators=(",", ":")).encode()
    limit = len(compact) + 1
    assert len(encode_document(content)) > limit  # under the limit as sent, over it as stored
    result = cli("--store", store, "--max-document-bytes", str(limit), "put", MAC1, stdin=compact)
    assert result.status == EXIT_FAILED
    assert "DOCUMENT_TOO_LARGE" in result.err
    assert stored_names(store) == []


def test_get_of_missing_and_corrupt_configs_fails_with_1(cli: Cli, store: Path) -> None:
    missing = cli("--store", store, "get", MAC1)
    assert missing.status == EXIT_FAILED
    assert "NOT_FOUND" in missing.err
    (store / f"{MAC2}.json").write_text('{"broken": ')
    corrupt = cli("--store", store, "get", MAC2)
    assert corrupt.status == EXIT_FAILED
    assert "CORRUPT_DOCUMENT" in corrupt.err
    assert corrupt.out == ""


def test_delete_honours_if_match(cli: Cli, store: Path) -> None:
    original = seed(store, MAC1, DOC1)
    stale = cli("--store", store, "delete", MAC1, "--if-match", "0" * 32)
    assert stale.status == EXIT_FAILED
    assert (store / f"{MAC1}.json").exists()
    deleted = cli(
        "--store", store, "delete", "AA-BB-CC-DD-EE-01", "--if-match", compute_etag(original)
    )
    assert deleted.status == EXIT_OK, deleted.err
    assert not (store / f"{MAC1}.json").exists()
    again = cli("--store", store, "delete", MAC1)
    assert again.status == EXIT_FAILED
    assert "NOT_FOUND" in again.err


# -- exit statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["list", "--no-such-option"],
        ["--max-document-bytes", "0", "list"],
        ["get"],
        ["get", "not-a-mac"],
        ["put", "aa-bb-cc-dd-ee-0g"],
        ["delete", MAC1, "--if-match", 'W/"unterminated'],
        ["put", MAC1, "/no/such/file.json"],
        ["validate", "/no/such/path"],
    ],
)
def test_usage_errors_exit_2(cli: Cli, store: Path, argv: list[str]) -> None:
    seed(store, MAC1, DOC1)
    result = cli("--store", store, *argv)
    assert result.status == EXIT_USAGE
    assert result.err.strip()
    assert "Traceback" not in result.err
    assert (store / f"{MAC1}.json").exists()


def test_bad_environment_setting_is_a_usage_error(cli: Cli, store: Path) -> None:
    result = cli("--store", store, "list", env={"IOT_CONFIG_MAX_DOCUMENT_BYTES": "lots"})
    assert result.status == EXIT_USAGE
    assert "IOT_CONFIG_MAX_DOCUMENT_BYTES" in result.err


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["get", MAC1],
        ["put", MAC1],
        ["delete", MAC1],
        ["import", "{docs}"],
        ["import", "{docs}", "--dry-run"],
        ["export", "{out}"],
    ],
)
def test_missing_store_root_exits_3(cli: Cli, tmp_path: Path, argv: list[str]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_doc(docs / f"{MAC1}.json", DOC1)
    argv = [a.format(docs=docs, out=tmp_path / "out") for a in argv]
    stdin = json.dumps(DOC1).encode() if argv[0] == "put" else None
    result = cli("--store", tmp_path / "absent", *argv, stdin=stdin)
    assert result.status == EXIT_UNAVAILABLE, result
    assert "STORE_UNAVAILABLE" in result.err
    assert not (tmp_path / "absent").exists()


def test_create_store_flag_creates_the_root(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "new-store"
    result = cli("--store", root, "put", MAC1, "--create-store", stdin=json.dumps(DOC1).encode())
    assert result.status == EXIT_OK, result.err
    assert (root / f"{MAC1}.json").exists()


def test_debug_shows_the_traceback(cli: Cli, tmp_path: Path) -> None:
    quiet = cli("--store", tmp_path / "absent", "list")
    assert "Traceback" not in quiet.err
    assert quiet.err.count("\n") == 1
    loud = cli("--debug", "--store", tmp_path / "absent", "list")
    assert loud.status == EXIT_UNAVAILABLE
    assert "Traceback" in loud.err


@pytest.mark.parametrize(
    "command",
    [
        None,
        "serve",
        "list",
        "get",
        "put",
        "delete",
        "import",
        "export",
        "validate",
        "patch",
        "schema",
    ],
)
def test_help_on_every_subcommand_documents_exit_statuses(cli: Cli, command: str | None) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.status == EXIT_OK
    assert "usage: iot-config" in result.out
    assert "exit status:" in result.out
    assert "3  store unavailable" in result.out


def test_version_is_the_package_version_everywhere(cli: Cli) -> None:
    result = cli("--version")
    assert result.status == EXIT_OK
    assert result.out == f"iot-config {metadata.version('iot-config')}\n"
    assert iot_config_core.__version__ == iot_config_server.__version__
    assert iot_config_core.__version__ == metadata.version("iot-config")


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["list", "--no-such-option"], "list"),
        (["--no-such-option", "list"], "list"),
        (["put", "zz"], "put"),
        (["get", MAC1, "--if-match", "x"], "get"),
        (["delete"], "delete"),
    ],
)
def test_command_line_errors_show_the_usage_of_their_subcommand(
    cli: Cli, store: Path, argv: list[str], command: str
) -> None:
    result = cli("--store", store, *argv)
    assert result.status == EXIT_USAGE
    assert result.err.startswith(f"usage: iot-config {command} ")
    assert f"iot-config {command}: error: " in result.err


@pytest.mark.parametrize(
    "argv", [["delete", MAC1, "--if-match", 'W/"unterminated'], ["import", "/no/such/dir"]]
)
def test_errors_found_while_running_are_one_line(cli: Cli, store: Path, argv: list[str]) -> None:
    result = cli("--store", store, *argv)
    assert result.status == EXIT_USAGE
    assert result.err.startswith("iot-config: error: ")
    assert result.err.count("\n") == 1


def test_help_explains_positionals_and_shows_the_serve_defaults() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not action.option_strings:
                assert action.help, f"{name} {action.metavar} has no help"
    serve_help = commands.choices["serve"].format_help()
    defaults = Settings()
    assert f"or {defaults.threads} on this machine)" in serve_help
    assert f"or {defaults.workers})" in serve_help


def test_an_empty_store_option_is_an_error(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("--store", "", "list")
    assert result.status == EXIT_USAGE
    assert "--store: must not be empty" in result.err
    assert not (tmp_path / "iot-configs").exists()


def test_a_relative_file_url_is_relative_to_the_working_directory(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As documented: ``file://fleet`` is ``./fleet`` (fsspec's reading), not a host."""
    monkeypatch.chdir(tmp_path)
    put = cli("--store", "file://fleet", "put", MAC1, "--create-store", stdin=b'{"a": 1}')
    assert put.status == EXIT_OK, put.err
    assert (tmp_path / "fleet" / f"{MAC1}.json").exists()


@pytest.mark.parametrize("payload", [b"", b"\n", b"  \r\n\t"])
def test_an_empty_document_says_so(cli: Cli, store: Path, tmp_path: Path, payload: bytes) -> None:
    source = tmp_path / "empty.json"
    source.write_bytes(payload)
    put = cli("--store", store, "put", MAC1, source)
    assert put.status == EXIT_FAILED
    assert put.err == "iot-config: error: document is empty [INVALID_DOCUMENT]\n"
    checked = cli("validate", source)
    assert f"invalid  {source}: document is empty [INVALID_DOCUMENT]" in checked.out
    assert stored_names(store) == []


def test_put_from_a_terminal_says_it_is_reading_standard_input(store: Path) -> None:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iot_config_server.cli", "--store", str(store), "put", MAC1],
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        os.write(leader, b'{"deviceName": "typed"}\n\x04')  # Ctrl-D at a line start: EOF
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == EXIT_OK, err
    assert b"reading the document from standard input" in err
    assert json.loads((store / f"{MAC1}.json").read_bytes()) == {"deviceName": "typed"}
    assert out.strip() == compute_etag((store / f"{MAC1}.json").read_bytes()).encode()


def test_get_etag_of_a_corrupt_document_shows_the_etag_that_repairs_it(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    (store / f"{MAC1}.json").write_bytes(b'{"broken": ')
    etag = compute_etag(b'{"broken": ')
    result = cli("--store", store, "get", MAC1, "--etag")
    assert result.status == EXIT_FAILED
    assert f"(current ETag {etag}) [CORRUPT_DOCUMENT]" in result.err
    write_doc(tmp_path / "fixed.json", DOC1)
    fixed = cli("--store", store, "put", MAC1, tmp_path / "fixed.json", "--if-match", etag)
    assert fixed.status == EXIT_OK, fixed.err


def test_memory_store_commands_say_nothing_is_kept(cli: Cli) -> None:
    result = cli("--store", "memory://fleet", "put", MAC1, stdin=b'{"a": 1}', env={})
    assert "nothing is kept after the command ends" in result.err


def test_unsupported_store_url_is_a_usage_error_and_missing_is_3(cli: Cli, tmp_path: Path) -> None:
    # Refused before any connection is made, naming the schemes that are supported.
    for url in ("http://127.0.0.1:1/configs", "ftp://127.0.0.1:1/configs"):
        unsupported = cli("--store", url, "list")
        assert unsupported.status == EXIT_USAGE
        assert "UNSUPPORTED_STORE" in unsupported.err
        assert "s3://" in unsupported.err
    missing = cli("--store", str(tmp_path / "nowhere"), "list")
    assert missing.status == EXIT_UNAVAILABLE
    assert "--create-store" in missing.err


# -- list -----------------------------------------------------------------------------------------


def test_list_table_and_json(cli: Cli, store: Path) -> None:
    seed(store, MAC1, DOC1)
    seed(store, MAC2, {**DOC2, "deviceName": "tab\there"})
    (store / "aa-bb-cc-dd-ee-03.json").write_text("{oops")
    (store / "notes.txt").write_text("hello")

    table = cli("--store", store, "list")
    assert table.status == EXIT_OK
    lines = table.out.splitlines()
    assert lines[0].split() == ["MAC", "NAME", "ENTITY", "ID", "OTA", "SIZE", "MODIFIED", "(UTC)"]
    assert lines[1].split()[:4] == [MAC1, "kitchen", "light.kitchen", "no"]
    assert lines[2].split()[:4] == [MAC2, "tab\\there", "-", "yes"]  # control chars escaped
    assert len(lines) == 3
    assert "aa-bb-cc-dd-ee-03.json" in table.err  # skipped files are reported, not hidden

    as_json = cli("--store", store, "list", "--json")
    assert as_json.status == EXIT_OK
    document = json.loads(as_json.out)
    assert document["count"] == 2
    first = document["configs"][0]
    assert first == {
        "mac_address": MAC1,
        "device_name": "kitchen",
        "device_entity_id": "light.kitchen",
        "enable_ota": False,
        "etag": compute_etag((store / f"{MAC1}.json").read_bytes()),
        "size": (store / f"{MAC1}.json").stat().st_size,
        "modified": first["modified"],
    }
    assert first["modified"].endswith("+00:00")
    assert sorted(document["skipped"]) == ["aa-bb-cc-dd-ee-03.json", "notes.txt"]


def test_list_of_an_empty_store(cli: Cli, store: Path) -> None:
    result = cli("--store", store, "list", "--json")
    assert json.loads(result.out) == {"configs": [], "count": 0, "skipped": []}


# -- import ---------------------------------------------------------------------------------------


def make_import_dir(root: Path) -> Path:
    """A directory with every kind of file an import meets in the wild."""
    root.mkdir()
    write_doc(root / "AA:BB:CC:DD:EE:01.json", DOC1)  # colon spelling
    write_doc(root / "aabbccddee02.json", DOC2)  # bare hex
    write_doc(root / "AABB.CCDD.EE03.json", {"deviceName": "dotted"})  # Cisco dots, upper case
    (root / "aa-bb-cc-dd-ee-04.json").write_text('{"deviceName": "broken",}')
    write_doc(root / "not-a-mac.json", DOC1)
    write_doc(root / "aa-bb-cc-dd-ee-05.json", {"blob": "x" * 400})
    write_doc(root / "aa-bb-cc-dd-ee-06.json", [1, 2])
    write_doc(root / "AA-BB-CC-DD-EE-07.json", {"v": 1})  # two files, one MAC
    write_doc(root / "aabbccddee07.json", {"v": 2})
    (root / "README.txt").write_text("not a config")
    write_doc(root / ".hidden.json", DOC1)  # ignored
    (root / "subdir").mkdir()  # ignored
    return root


def test_import_mixed_directory(cli: Cli, store: Path, tmp_path: Path) -> None:
    docs = make_import_dir(tmp_path / "docs")
    result = cli("--store", store, "--max-document-bytes", "300", "import", docs)
    assert result.status == EXIT_FAILED  # some files were rejected
    assert stored_names(store) == [f"{MAC1}.json", f"{MAC2}.json", "aa-bb-cc-dd-ee-03.json"]
    assert json.loads((store / f"{MAC2}.json").read_bytes()) == DOC2
    rejected = {
        line.split()[1].rstrip(":"): line
        for line in result.out.splitlines()
        if line.startswith("rejected")
    }
    assert sorted(rejected) == [
        "AA-BB-CC-DD-EE-07.json",
        "README.txt",
        "aa-bb-cc-dd-ee-04.json",
        "aa-bb-cc-dd-ee-05.json",
        "aa-bb-cc-dd-ee-06.json",
        "aabbccddee07.json",
        "not-a-mac.json",
    ]
    assert "invalid JSON" in rejected["aa-bb-cc-dd-ee-04.json"]
    assert "DOCUMENT_TOO_LARGE" in rejected["aa-bb-cc-dd-ee-05.json"]
    assert (
        "not an array" in rejected["aa-bb-cc-dd-ee-06.json"]
        or "array" in rejected["aa-bb-cc-dd-ee-06.json"]
    )
    assert "INVALID_MAC" in rejected["not-a-mac.json"]
    assert "DUPLICATE_MAC" in rejected["aabbccddee07.json"]
    assert result.out.splitlines()[-1] == "imported 3, unchanged 0, skipped 0, rejected 7"
    assert "\r" not in result.err  # no progress bar when stderr is not a terminal
    assert not any(p.name.endswith(".tmp") for p in store.iterdir())


def test_import_dry_run_writes_nothing(cli: Cli, store: Path, tmp_path: Path) -> None:
    docs = make_import_dir(tmp_path / "docs")
    result = cli("--store", store, "--max-document-bytes", "300", "import", docs, "--dry-run")
    assert result.status == EXIT_FAILED
    assert result.out.splitlines()[-1] == (
        "dry run, nothing written: would import 3, unchanged 0, skipped 0, rejected 7"
    )
    assert stored_names(store) == []

    before = seed(store, MAC1, {"deviceName": "older"})
    again = cli("--store", store, "import", docs, "--dry-run", "--overwrite")
    assert "would import 4," in again.out.splitlines()[-1]
    assert stored_names(store) == [f"{MAC1}.json"]
    assert (store / f"{MAC1}.json").read_bytes() == before


def test_import_overwrite_unchanged_and_skipped(cli: Cli, store: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_doc(docs / f"{MAC1}.json", DOC1)
    write_doc(docs / f"{MAC2}.json", DOC2)
    original2 = seed(store, MAC2, {"deviceName": "older"})
    seed(store, MAC1, DOC1)  # same bytes the import would write

    first = cli("--store", store, "import", docs, "--json")
    assert first.status == EXIT_OK, first.err
    report = json.loads(first.out)
    assert report["imported"] == []
    assert report["unchanged"] == [f"{MAC1}.json"]
    assert [s["file"] for s in report["skipped"]] == [f"{MAC2}.json"]
    assert "overwrite replaces it" in report["skipped"][0]["reason"]
    assert (store / f"{MAC2}.json").read_bytes() == original2

    second = cli("--store", store, "import", docs, "--overwrite", "--json")
    report = json.loads(second.out)
    assert report["imported"] == [f"{MAC2}.json"]
    assert json.loads((store / f"{MAC2}.json").read_bytes()) == DOC2


def test_import_into_missing_store_with_create_store(cli: Cli, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_doc(docs / f"{MAC1}.json", DOC1)
    root = tmp_path / "fresh"
    result = cli("--store", root, "import", docs, "--create-store")
    assert result.status == EXIT_OK, result.err
    assert (root / f"{MAC1}.json").exists()


def test_import_shows_progress_only_on_a_terminal(store: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        write_doc(docs / f"aa-bb-cc-dd-ee-1{i}.json", {"n": i})
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "iot_config_server.cli",
                "--store",
                str(store),
                "import",
                str(docs),
            ],
            stdout=subprocess.PIPE,
            stderr=follower,
            check=False,
            timeout=60,
            cwd=REPO,
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == EXIT_OK
    terminal = b"".join(chunks)
    assert b"\rimporting 5/5" in terminal
    assert proc.stdout.decode().splitlines()[-1] == "imported 5, unchanged 0, skipped 0, rejected 0"


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.integers(min_value=0, max_value=(1 << 48) - 1),
    separator=st.sampled_from([":", "-", ""]),
    upper=st.booleans(),
)
def test_import_accepts_any_mac_spelling_and_stores_the_canonical_name(
    tmp_path_factory: pytest.TempPathFactory, value: int, separator: str, upper: bool
) -> None:
    base = tmp_path_factory.mktemp("spelling")
    store, docs = base / "store", base / "docs"
    store.mkdir()
    docs.mkdir()
    mac = MacAddress(value)
    spelled = mac.with_separator(separator, upper=upper)
    write_doc(docs / f"{spelled}.json", {"value": value})
    assert main(["--store", str(store), "import", str(docs)], environ={}) == EXIT_OK
    assert stored_names(store) == [mac.file_name]


# -- export ---------------------------------------------------------------------------------------


def test_export_round_trips_through_import(cli: Cli, store: Path, tmp_path: Path) -> None:
    seed(store, MAC1, DOC1)
    # A hand-formatted file: export must keep its exact bytes (its ETag), not re-encode it.
    (store / f"{MAC2}.json").write_bytes(b'{"deviceName":"hall"}')
    out = tmp_path / "export"
    result = cli("--store", store, "export", out)
    assert result.status == EXIT_OK, result.err
    assert sorted(p.name for p in out.iterdir()) == [f"{MAC1}.json", f"{MAC2}.json"]
    for name in (f"{MAC1}.json", f"{MAC2}.json"):
        assert (out / name).read_bytes() == (store / name).read_bytes()
    assert "2 written, 0 unchanged" in result.out

    again = cli("--store", store, "export", out)
    assert "0 written, 2 unchanged" in again.out

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    imported = cli("--store", fresh, "import", out)
    assert imported.status == EXIT_OK
    listed = [json.loads(cli("--store", s, "list", "--json").out) for s in (store, fresh)]
    contents = [
        [json.loads(cli("--store", s, "get", c["mac_address"]).out) for c in doc["configs"]]
        for s, doc in zip((store, fresh), listed, strict=True)
    ]
    assert contents[0] == contents[1]
    assert listed[1]["configs"][0]["etag"] == listed[0]["configs"][0]["etag"]


def test_export_reports_corrupt_configs_and_exports_the_rest(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    seed(store, MAC1, DOC1)
    (store / f"{MAC2}.json").write_text("{")
    out = tmp_path / "export"
    result = cli("--store", store, "export", out)
    assert result.status == EXIT_FAILED
    assert f"not exported: {MAC2}.json" in result.err
    assert sorted(p.name for p in out.iterdir()) == [f"{MAC1}.json"]


def test_export_target_that_is_a_file_is_a_usage_error(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    seed(store, MAC1, DOC1)
    target = tmp_path / "file"
    target.write_text("x")
    result = cli("--store", store, "export", target)
    assert result.status == EXIT_USAGE
    assert f"{target}: not a directory" in result.err
    assert result.err.rstrip().endswith("[FILE_ERROR]")


def test_export_write_failure_names_the_file_and_the_reason(store: Path, tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE) makes the write fail with EFBIG, as a full disk would."""
    seed(store, MAC1, {"blob": "x" * 4096})
    out = tmp_path / "out"
    limit = textwrap.dedent(
        """
        import resource, signal, sys
        from iot_config_server.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
        try:
            status = main(sys.argv[1:], environ={})
        finally:  # coverage, when it measures this process, writes its data at exit
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        sys.exit(status)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", limit, "--store", str(store), "export", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == EXIT_UNAVAILABLE
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("iot-config")]
    assert error.startswith(f"iot-config: error: cannot write {out / MAC1}.json: File too large")
    assert error.endswith("[FILE_ERROR]")
    assert "Traceback" not in result.stderr
    assert [p.name for p in out.iterdir()] == []  # the temp file is gone too


# -- validate -------------------------------------------------------------------------------------


def test_validate_files_and_directories(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    write_doc(good / f"{MAC1}.json", DOC1)
    write_doc(good / "AA:BB:CC:DD:EE:02.json", DOC2)
    single = tmp_path / "any-name.json"  # a single file is checked for content only
    write_doc(single, DOC1)
    ok = cli("validate", good, single, "-v")
    assert ok.status == EXIT_OK, ok.out
    assert ok.out.splitlines()[-1] == "3 valid, 0 invalid"
    assert f"ok       {good / MAC1}.json" in ok.out.splitlines()
    assert f"ok       {single}" in ok.out.splitlines()

    bad = make_import_dir(tmp_path / "bad")
    result = cli("--max-document-bytes", "300", "validate", bad, single)
    assert result.status == EXIT_FAILED
    assert result.out.splitlines()[-1] == "4 valid, 7 invalid"


def invalid_names(out: str) -> set[str]:
    return {
        Path(line.split()[1].rstrip(":")).name
        for line in out.splitlines()
        if line.startswith("invalid")
    }


def rejected_names(out: str) -> set[str]:
    return {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("rejected")}


def test_validate_rejects_exactly_what_import_rejects(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    """A clean validate means a clean import: duplicates and stray files included."""
    docs = make_import_dir(tmp_path / "docs")
    checked = cli("--max-document-bytes", "300", "validate", docs)
    imported = cli("--store", store, "--max-document-bytes", "300", "import", docs, "--dry-run")
    assert invalid_names(checked.out) == rejected_names(imported.out)
    assert {"README.txt", "AA-BB-CC-DD-EE-07.json", "aabbccddee07.json"} <= invalid_names(
        checked.out
    )
    for name in invalid_names(checked.out):
        (docs / name).unlink()
    clean = cli("--max-document-bytes", "300", "validate", docs)
    assert clean.status == EXIT_OK, clean.out
    assert cli("--store", store, "import", docs).status == EXIT_OK


def test_validate_of_a_store_lists_hand_copied_legacy_names(cli: Cli, store: Path) -> None:
    seed(store, MAC1, DOC1)
    (store / "AA-BB-CC-DD-EE-02.json").write_bytes(encode_document(DOC2))  # copied by hand
    listed = cli("--store", store, "list", "--json")
    assert json.loads(listed.out)["skipped"] == ["AA-BB-CC-DD-EE-02.json"]  # its device gets 404
    result = cli("validate", store)
    assert result.status == EXIT_OK
    (line,) = [line for line in result.out.splitlines() if line.startswith("legacy")]
    assert "AA-BB-CC-DD-EE-02.json" in line
    assert f"only as {MAC2}.json" in line
    assert "iot-config import" in line
    # The fix it names works on the store itself: the canonical file is created beside it.
    fixed = cli("--store", store, "import", store)
    assert fixed.status == EXIT_OK, fixed.out
    assert fixed.out.splitlines()[-1] == "imported 1, unchanged 1, skipped 0, rejected 0"
    assert json.loads(cli("--store", store, "get", MAC2).out) == DOC2


def test_validate_takes_no_store(cli: Cli, tmp_path: Path) -> None:
    single = tmp_path / "doc.json"
    write_doc(single, DOC1)
    assert cli("validate", single, env={"IOT_CONFIG_STORE": str(tmp_path / "x")}).status == 0
    result = cli("--store", tmp_path / "absent", "validate", single)
    assert result.status == EXIT_USAGE
    assert "without a store" in result.err
    help_text = cli("validate", "--help").out
    assert "Without PATH, check every stored config against its JSON Schema" in " ".join(
        help_text.split()
    )


# -- the real entry points, in fresh processes ----------------------------------------------------


def run_module(
    *argv: str,
    module: str = "iot_config_server.cli",
    env: dict[str, str] | None = None,
    stdin: bytes = b"",
) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IOT_CONFIG_")}
    environment.pop("ESP32_CONFIGS_DIR", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        input=stdin,
        capture_output=True,
        env=environment,
        cwd=REPO,
        check=False,
        timeout=60,
    )


def test_module_entry_points_and_environment_store(store: Path) -> None:
    put = run_module(
        "put", MAC1, env={"IOT_CONFIG_STORE": str(store)}, stdin=json.dumps(DOC1).encode()
    )
    assert put.returncode == EXIT_OK, put.stderr
    listed = run_module(
        "list", "--json", module="iot_config_server", env={"ESP32_CONFIGS_DIR": str(store)}
    )
    assert listed.returncode == EXIT_OK, listed.stderr
    assert json.loads(listed.stdout)["configs"][0]["mac_address"] == MAC1
    got = run_module("--store", str(store), "get", MAC1)
    assert got.stdout == (store / f"{MAC1}.json").read_bytes()
    assert compute_etag(got.stdout) == put.stdout.decode().strip()


def test_module_exit_statuses_and_one_line_errors(store: Path, tmp_path: Path) -> None:
    missing = run_module("--store", str(store), "get", MAC1)
    assert missing.returncode == EXIT_FAILED
    assert missing.stderr.decode().count("\n") == 1
    usage = run_module("--store", str(store), "get", "xyz")
    assert usage.returncode == EXIT_USAGE
    down = run_module("--store", str(tmp_path / "absent"), "list")
    assert down.returncode == EXIT_UNAVAILABLE
    assert down.stderr.decode().startswith("iot-config: error: ")
    assert b"Traceback" not in down.stderr


BLOCK_SERVER_DEPS = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"bottle", "prometheus_client", "waitress", "granian"}:
                raise ImportError(f"{name} is blocked for this test")
            return None
    sys.meta_path.insert(0, _Block())
    import runpy
    sys.argv = ["iot-config", *sys.argv[1:]]
    runpy.run_module("iot_config_server", run_name="__main__")
    """
)


def test_cli_works_without_the_server_extra(store: Path, tmp_path: Path) -> None:
    """The core installs alone; only ``serve`` may need Bottle."""

    def run(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-c", BLOCK_SERVER_DEPS, *argv],
            input=stdin,
            capture_output=True,
            cwd=REPO,
            check=False,
            timeout=60,
        )

    assert run("--store", str(store), "put", MAC1, stdin=json.dumps(DOC1).encode()).returncode == 0
    listed = run("--store", str(store), "list")
    assert listed.returncode == EXIT_OK, listed.stderr
    assert MAC1 in listed.stdout.decode()
    assert run("--store", str(store), "export", str(tmp_path / "out")).returncode == EXIT_OK
    assert run("validate", str(tmp_path / "out")).returncode == EXIT_OK
    serve = run("--store", str(store), "serve")
    assert serve.returncode == EXIT_USAGE
    assert "pip install '.[server]'" in serve.stderr.decode()
    assert b"Traceback" not in serve.stderr


def test_serve_rejects_invalid_settings_before_binding(store: Path) -> None:
    result = run_module("--store", str(store), "serve", "--port", "70000")
    assert result.returncode == EXIT_USAGE
    assert "port" in result.stderr.decode()
    assert "65535" in result.stderr.decode()


def test_serve_on_a_missing_store_exits_3_without_serving(tmp_path: Path) -> None:
    result = run_module("--store", str(tmp_path / "absent"), "serve", "--port", "1")
    assert result.returncode == EXIT_UNAVAILABLE
    assert b"does not exist" in result.stdout + result.stderr  # the server logs to stdout
    assert not (tmp_path / "absent").exists()


# -- the README's commands ------------------------------------------------------------------------


def readme_commands() -> list[str]:
    """The ``$ ...`` lines of the README's "The two commands" section."""
    section = (REPO / "README.md").read_text().split("## The two commands")[1].split("\n## ")[0]
    return [line[2:] for line in section.splitlines() if line.startswith("$ ")]


def test_ci_runs_the_readmes_test_command_word_for_word() -> None:
    run_command, test_command = readme_commands()
    assert run_command.startswith("python3 -m venv .venv && ")
    assert test_command.startswith("python3 -m venv .venv && ")
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


OUTSIDE_FILES = re.compile(r"shared/(ceph|STORAGE-NOTES|STYLE|compat)")


def test_the_repository_needs_nothing_beside_it() -> None:
    """Sessions and CI use the in-repo Ceph scripts, never files outside the checkout."""
    noxfile = (REPO / "noxfile.py").read_text()
    assert '"tests" / "ceph"' in noxfile
    for script in ("start-ceph.sh", "stop-ceph.sh"):
        assert os.access(REPO / "tests" / "ceph" / script, os.X_OK)
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    for name in tracked:
        path = REPO / name
        if path.suffix in {".py", ".toml", ".sh", ".md", ".yaml"} or name == ".ci/run":
            assert not OUTSIDE_FILES.search(path.read_text()), name


# -- list pages and filters -----------------------------------------------------------------------


def test_list_pages_and_filters(cli: Cli, store: Path) -> None:
    for index in range(5):
        seed(
            store, f"aa-bb-cc-dd-ee-0{index}", {"deviceName": f"Dev{index}", "enableOTA": index > 2}
        )
    seen: list[str] = []
    argv: list[str | Path] = ["--store", store, "list", "--json", "--limit", "2"]
    cursor = None
    for _ in range(5):
        result = cli(*argv, *(["--cursor", cursor] if cursor else []))
        assert result.status == 0
        page = json.loads(result.out)
        seen += [c["mac_address"] for c in page["configs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"aa-bb-cc-dd-ee-0{index}" for index in range(5)]
    table = cli("--store", store, "list", "--limit", "1", "--name", "dev")
    assert "aa-bb-cc-dd-ee-00" in table.out
    assert "--cursor m1." in table.err
    ota = json.loads(cli("--store", store, "list", "--json", "--ota", "true").out)
    assert [c["mac_address"] for c in ota["configs"]] == ["aa-bb-cc-dd-ee-03", "aa-bb-cc-dd-ee-04"]
    assert "next_cursor" not in ota
    bad = cli("--store", store, "list", "--cursor", "aa-bb-cc-dd-ee-00")
    assert bad.status == 2
    assert "INVALID_QUERY" in bad.err
