"""The examples, run as scripts: against a real store directory and a real server process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, ServerProcess, call, child_env

from iot_config_core import (
    MacAddress,
    MergePatch,
    PreconditionFailedError,
    encode_document,
    open_store,
)
from iot_config_core.fleet import FleetOutcome, patch_device

EXAMPLES = REPO / "examples"


def run_example(name: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *argv],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        check=False,
        timeout=timeout,
    )


def seed(root: Path, mac: str, content: dict[str, object]) -> bytes:
    data = encode_document(content)
    (root / MacAddress.parse(mac).file_name).write_bytes(data)
    return data


def read(root: Path, mac: str) -> dict[str, object]:
    result: dict[str, object] = json.loads((root / MacAddress.parse(mac).file_name).read_bytes())
    return result


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


# -- fleet_set_key.py -----------------------------------------------------------------------------


def test_fleet_set_key_changes_only_matching_devices(store_dir: Path) -> None:
    seed(store_dir, "02-00-00-00-00-01", {"deviceName": "kitchen-1", "enableOTA": False, "x": 1})
    seed(store_dir, "02-00-00-00-00-02", {"deviceName": "kitchen-2", "enableOTA": True})
    hall = seed(store_dir, "02-00-00-00-00-03", {"deviceName": "hall", "enableOTA": False})
    seed(store_dir, "02-00-00-00-00-04", {"deviceName": "kitchen-4", "enableOTA": 1})

    result = run_example(
        "fleet_set_key.py", "--store", str(store_dir), "--name", "kitchen-*", "enableOTA", "true"
    )
    assert result.returncode == 0, result.stderr
    assert read(store_dir, "02-00-00-00-00-01") == {
        "deviceName": "kitchen-1",
        "enableOTA": True,
        "x": 1,
    }
    assert read(store_dir, "02-00-00-00-00-04")["enableOTA"] is True  # 1 is not true in JSON
    assert (store_dir / "02-00-00-00-00-03.json").read_bytes() == hall
    assert result.stdout.splitlines()[-1].startswith("changed 2, unchanged 1;")


def test_fleet_set_key_dry_run_and_regex(store_dir: Path) -> None:
    before = {
        mac: seed(store_dir, mac, {"deviceName": name})
        for mac, name in [("02-00-00-00-00-01", "lab-1"), ("02-00-00-00-00-02", "lab-x")]
    }
    result = run_example(
        "fleet_set_key.py",
        "--store",
        str(store_dir),
        "--regex",
        r"^lab-\d+$",
        "pollSeconds",
        "30",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert "would change 1" in result.stdout
    for mac, data in before.items():
        assert (store_dir / f"{mac}.json").read_bytes() == data

    bad = run_example("fleet_set_key.py", "--store", str(store_dir), "deviceName", "unquoted")
    assert bad.returncode == 2
    assert "quote" in bad.stderr


def test_fleet_set_key_never_overwrites_a_concurrent_edit(store_dir: Path) -> None:
    """A writer bumps counters while the example runs: no increment may be lost."""
    macs = [str(MacAddress(0x020000000000 + i)) for i in range(6)]
    for i, mac in enumerate(macs):
        seed(store_dir, mac, {"deviceName": f"dev-{i}", "counter": 0})
    store = open_store(str(store_dir))
    increments = dict.fromkeys(macs, 0)
    stop = threading.Event()
    lock = threading.Lock()

    def writer() -> None:
        rng = random.Random()
        while not stop.is_set():
            mac = rng.choice(macs)
            config = store.get(mac)
            content = {**config.content, "counter": int(config.content["counter"]) + 1}
            try:
                store.put(mac, content, if_match=config.etag)
            except PreconditionFailedError:
                continue
            with lock:
                increments[mac] += 1

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        result = run_example(
            "fleet_set_key.py",
            "--store",
            str(store_dir),
            "--name",
            "dev-*",
            "flag",
            "true",
            "--max-attempts",
            "50",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sum(increments.values()) > 0
    for mac in macs:
        content = read(store_dir, mac)
        assert content["flag"] is True
        assert content["counter"] == increments[mac], mac


def test_fleet_set_key_rereads_after_an_edit_between_its_read_and_write(store_dir: Path) -> None:
    """Deterministic: another admin edits the device right after the fleet patch listed it."""
    mac = MacAddress.parse("02-00-00-00-00-01")
    seed(store_dir, str(mac), {"deviceName": "kitchen", "note": "old"})
    store = open_store(str(store_dir))
    other_admin = open_store(str(store_dir))
    listed = store.listing().summaries[0]
    current = other_admin.get(mac)
    other_admin.put(mac, {**current.content, "note": "edited"}, if_match=current.etag)

    result = patch_device(
        store, listed, MergePatch({"enableOTA": True}), lambda s: s.device_name == "kitchen"
    )
    assert (result.outcome, result.retries) == (FleetOutcome.CHANGED, 1)
    assert read(store_dir, str(mac)) == {
        "deviceName": "kitchen",
        "note": "edited",
        "enableOTA": True,
    }
    other_admin.put(mac, {"deviceName": "hall"})  # renamed meanwhile: no longer selected
    result = patch_device(store, listed, MergePatch({"x": 1}), lambda s: s.device_name == "kitchen")
    assert result.outcome is FleetOutcome.NO_LONGER_MATCHES
    assert read(store_dir, str(mac)) == {"deviceName": "hall"}


# -- a real server process ------------------------------------------------------------------------


def http_get(port: int, path: str) -> int:
    return call(port, "GET", path, timeout=5)[0]


@pytest.fixture
def server(store_dir: Path, tmp_path: Path) -> Iterator[int]:
    """``iot-config serve`` in its own process on a free loopback port; it must stop on SIGTERM."""
    log = tmp_path / "server.log"
    with ServerProcess("--store", str(store_dir), log_path=log) as proc:
        yield proc.port
        assert proc.terminate(20) == 0, proc.log()[-2000:]


def test_fleet_simulator_against_a_real_server(server: int, store_dir: Path) -> None:
    present = [str(MacAddress(0x020000000000 + i)) for i in range(4)]
    for i, mac in enumerate(present):
        seed(store_dir, mac, {"deviceName": f"sim-{i}", "enableOTA": i % 2 == 0})
    assert http_get(server, "/api/health/ready") == 200
    args = [f"--mac={mac}" for mac in [*present, "02-ff-ff-ff-ff-ff"]]
    result = run_example(
        "fleet_simulator.py",
        "--url",
        f"http://127.0.0.1:{server}",
        *args,
        "--polls",
        "3",
        "--interval",
        "0.02",
        "--duration",
        "60",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Each present device: one 200, then 304s; the absent one: 404 every time.
    assert report == {
        **report,
        "devices": 5,
        "requests": 15,
        "200": 4,
        "304": 8,
        "404": 3,
        "other": 0,
        "error": 0,
    }


def test_fleet_simulator_sees_a_change_made_through_the_cli(server: int, store_dir: Path) -> None:
    mac = "02-00-00-00-00-09"
    seed(store_dir, mac, {"deviceName": "changing", "v": 0})
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "fleet_simulator.py"),
            "--url",
            f"http://127.0.0.1:{server}",
            f"--mac={mac}",
            "--polls",
            "40",
            "--interval",
            "0.05",
            "--json",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO,
    )
    time.sleep(0.5)
    put = subprocess.run(
        [sys.executable, "-m", "iot_config_server.cli", "--store", str(store_dir), "put", mac],
        input=json.dumps({"deviceName": "changing", "v": 1}),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        check=False,
        timeout=60,
    )
    assert put.returncode == 0, put.stderr
    out, _ = proc.communicate(timeout=60)
    report = json.loads(out)
    assert report["200"] == 2  # the first fetch and the one after the change
    assert report["304"] == report["requests"] - 2
    assert report["error"] == 0


def test_fleet_simulator_refuses_remote_hosts_without_a_flag() -> None:
    result = run_example("fleet_simulator.py", "--url", "http://192.0.2.1:8080", "--polls", "1")
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr


@pytest.mark.parametrize(
    ("name", "argv", "said"),
    [
        ("fleet_set_key.py", ["--regex", "(", "enableOTA", "true"], "not a regular expression"),
        ("fleet_set_key.py", ["--max-attempts", "0", "enableOTA", "true"], "at least 1"),
        ("fleet_simulator.py", ["--mac", "zz"], "invalid MAC address 'zz'"),
        ("fleet_simulator.py", ["--first-mac", "02:00"], "invalid MAC address"),
        ("fleet_simulator.py", ["--url", "http://127.0.0.1:port"], "http://host[:port]"),
        ("fleet_simulator.py", ["--interval", "-1"], "0..86400"),
        ("fleet_simulator.py", ["--duration", "nan"], "0..86400"),
        ("fleet_simulator.py", ["--devices", "0"], "1..2000"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(
    store_dir: Path, name: str, argv: list[str], said: str
) -> None:
    if name == "fleet_set_key.py":
        argv = [*argv, "--store", str(store_dir)]
    result = run_example(name, *argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert said in error
    assert result.stdout == ""


def test_fleet_set_key_names_a_device_without_a_name_by_its_mac(store_dir: Path) -> None:
    seed(store_dir, "02-00-00-00-00-01", {"enableOTA": False})
    result = run_example("fleet_set_key.py", "--store", str(store_dir), "enableOTA", "true")
    assert result.returncode == 0, result.stderr
    assert "02-00-00-00-00-01: changed" in result.stdout.splitlines()
    assert "None" not in result.stdout


def test_fleet_set_key_usage_lines_work_as_written(tmp_path: Path) -> None:
    """The docstring's commands, run by a shell in an empty directory (activation aside)."""
    doc = (EXAMPLES / "fleet_set_key.py").read_text().split('"""')[1]
    commands = [line.strip() for line in doc.splitlines() if line.startswith("    ")]
    assert commands
    assert commands[0].startswith(". .venv/bin/activate")
    (tmp_path / "examples").symlink_to(EXAMPLES)
    env = child_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for command in commands[1:]:
        result = subprocess.run(
            ["bash", "-c", command.replace("python3 ", f"{sys.executable} ", 1)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    assert read(tmp_path / "iot-configs", "aa-bb-cc-dd-ee-01")["enableOTA"] is True
