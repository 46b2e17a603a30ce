"""Developer and CI sessions: ``nox -s tests lint typecheck`` is what CI runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_venv = "yes"

PYTHON = "3.11"
# nginx lives in /usr/sbin, which is not on every user's PATH.
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# The throw-away Ceph cluster of `nox -s ceph` (docs/storage.md).
CEPH_SCRIPTS = Path(__file__).resolve().parent / "tests" / "ceph"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite with branch coverage; the core must stay at or above 90 %."""
    session.install("-e", ".[server,test,s3-test]")
    _ensure_mosquitto(session)
    session.run("coverage", "erase")
    # Subprocesses (servers, CLI runs) are measured through coverage's `patch = subprocess`.
    session.run("pytest", "--cov", "--cov-report=", *session.posargs)
    # --append: keep what pytest-cov combined, add files from subprocesses that ended after it.
    session.run("coverage", "combine", "--append", success_codes=[0, 1])
    session.run("coverage", "report", "--include=iot_config_core/*", "--fail-under=90")
    session.run("coverage", "report", "--include=iot_config_server/*")


def _ensure_mosquitto(session: nox.Session) -> None:
    """The MQTT tests' broker (Debian's mosquitto); without it they skip, saying so."""
    if shutil.which("mosquitto", path=_SBIN_PATH) is not None:
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        session.run("apt-get", "update", "-qq", external=True, success_codes=[0, 100])
        session.run("apt-get", "install", "-y", "-qq", "mosquitto", external=True)
    else:
        session.warn("mosquitto missing: the MQTT tests will skip (apt-get install mosquitto)")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over packages, tests and examples."""
    session.install("-e", ".[server,test]", "mypy>=1.11", "nox")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against the physical floor measured in the same run."""
    session.install("-e", ".[server,test,s3-test]")
    _ensure_mosquitto(session)  # bench_mqtt.py
    # bench_server.py loads the server with wrk and compares it with nginx (Debian packages).
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool, path=_SBIN_PATH) is None]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        session.run("apt-get", "update", "-qq", external=True, success_codes=[0, 100])
        session.run(
            "apt-get", "install", "-y", "-qq", *missing, external=True, success_codes=[0, 100]
        )
    elif missing:
        session.warn(f"{' and '.join(missing)} missing: apt-get install -y wrk nginx (as root)")
    # Every tests/benchmarks/bench_*.py script, each given the posargs (e.g. --quick).
    for script in sorted(Path("tests/benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)


@nox.session(python=PYTHON)
def reliability(session: nox.Session) -> None:
    """Fuzzing, faults, crashes and load in their long versions; figures for docs/reliability.md."""
    session.install("-e", ".[server,test]", "schemathesis>=4")
    try:  # coverage-guided fuzzing; the Hypothesis fuzz tests still run where it cannot build
        session.install("atheris>=2.3")
    except nox.command.CommandFailed:
        session.warn("atheris does not install on this Python: libFuzzer runs are skipped")
    if shutil.which("wrk") is None:
        session.run("apt-get", "update", "-q", external=True)
        session.run("apt-get", "install", "-y", "-q", "wrk", external=True)
    results = Path("build/reliability/results.json")
    results.unlink(missing_ok=True)
    session.run(
        "pytest",
        "tests/reliability",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"IOT_CONFIG_RELIABILITY": "full", "IOT_CONFIG_RELIABILITY_RESULTS": str(results)},
    )


@nox.session(python=PYTHON)
def ceph(session: nox.Session) -> None:
    """Contract suite and two server replicas on a real CephFS, two ceph-fuse clients (root, FUSE).

    Starts a throw-away single-node cluster with ``tests/ceph/start-ceph.sh`` (installs the Debian
    packages if missing), and always stops and purges it, whatever the tests did.
    """
    session.install("-e", ".[server,test,s3-test]")
    base = Path(tempfile.mkdtemp(prefix="iot-config-ceph-"))
    port = int(os.environ.get("IOT_CONFIG_CEPH_PORT_BASE", "18360"))
    try:
        session.run(
            *("bash", str(CEPH_SCRIPTS / "start-ceph.sh"), str(base), str(port)),
            env={"WITH_RGW": "1"},  # radosgw too: the S3 server that ignores If-Match on DELETE
            external=True,
        )
        session.run(
            "pytest",
            "tests/test_store_ceph.py",
            "tests/test_replicas.py",
            "tests/test_store_s3.py::test_radosgw_compare_and_swap_works_and_unsafe_delete_is_refused",
            *session.posargs,
            env={
                "IOT_CONFIG_TEST_CEPHFS": str(base / "mnt"),
                "IOT_CONFIG_TEST_RGW": f"http://127.0.0.1:{port + 2}",
            },
        )
    finally:
        session.run("bash", str(CEPH_SCRIPTS / "stop-ceph.sh"), str(base), "--purge", external=True)
        if not os.path.ismount(base / "mnt"):  # never delete through a live mount
            shutil.rmtree(base, ignore_errors=True)
