"""Helpers of the reliability suite: run mode, store snapshots, private mounts, child processes."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

FULL = os.environ.get("IOT_CONFIG_RELIABILITY", "").lower() == "full"
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def scaled(short: float, full: float) -> float:
    """The short-mode or the full-mode value of a bound (time, count, rounds)."""
    return full if FULL else short


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), lock files excluded.

    Lock files are created empty on first write attempt and hold no data; everything else,
    including any stray temp file, is part of the comparison.
    """
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".locks/"):
            files[rel] = path.read_bytes()
    return files


def temp_files(root: Path) -> list[str]:
    """Temp files a writer left in ``root`` (the store's temp names end in ``.tmp``)."""
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp"))


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    """A private tmpfs of ``size`` at ``path`` for the duration; skip when mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={size},mode=0755",
            f"iotcfg-{uuid.uuid4().hex[:8]}",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def remount(path: Path, mode: str) -> None:
    """Remount the tmpfs at ``path`` ``ro`` or ``rw``: read-only binds stop root, chmod does not."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def python_env() -> dict[str, str]:
    """The environment for child Python processes: the repository importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Answer = tuple[int, dict[str, str], bytes]


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One request over a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def put_body(content: dict[str, object]) -> bytes:
    return json.dumps({"content": content}).encode()


JSON_HEADERS = {"Content-Type": "application/json"}


class ServerProcess:
    """The real server in a child process on 127.0.0.1: started, probed, stopped or killed.

    Runs ``python -m iot_config_server.cli serve`` (the production entry point: a supervisor and
    its worker processes, in a session of their own); with ``slow`` set it runs `run_server.py`,
    which serves the same app on the same server over a latency-adding backend.
    """

    def __init__(
        self,
        store: Path,
        log_path: Path,
        *,
        slow: float | None = None,
        env: dict[str, str] | None = None,
        threads: int | None = None,
        log_level: str = "WARNING",
    ) -> None:
        self.store = store
        self.log_path = log_path
        self._log = log_path.open("ab")
        env = {"IOT_CONFIG_LOG_LEVEL": log_level, **(env or {})}
        # Other test sessions start servers on random ports too: a port can be taken between
        # picking it and binding it, and then the readiness probe would reach *their* server.
        # So readiness also requires that our process group holds the listening socket.
        for _ in range(5):
            self.port = free_port()
            if slow is None:
                args = [
                    PYTHON,
                    "-m",
                    "iot_config_server.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--store",
                    str(store),
                    "--log-level",
                    log_level,
                ]
                if threads is not None:
                    args += ["--threads", str(threads)]
            else:
                args = [PYTHON, str(Path(__file__).with_name("run_server.py")), str(store),
                        str(self.port), str(slow)]  # fmt: skip
            self.proc = subprocess.Popen(
                args,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**python_env(), **env},
                start_new_session=True,  # one process group: a crash kills workers too
            )
            if self.wait_ready():
                return
            self.kill()
        raise RuntimeError(f"could not start a server of our own: {self.log()[-2000:]}")

    def _pids(self) -> list[int]:
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def owns_port(self) -> bool:
        """Whether one of our processes holds the socket listening on ``self.port``."""
        inodes = set()
        with contextlib.suppress(OSError):
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{self.port:04X}") and fields[3] == "0A":
                    inodes.add(fields[9])
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        link = os.readlink(fd)
                        if link.startswith("socket:[") and link[8:-1] in inodes:
                            return True
        return False

    def wait_ready(self, timeout: float = 20.0) -> bool:
        """Wait until our server answers liveness; False when the port turned out not ours."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "cannot listen" in self.log()[-2000:]:
                    return False
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                if call(self.port, "GET", "/api/health/live", timeout=2)[0] == 200:
                    if self.owns_port():
                        return True
                    time.sleep(0.1)  # someone else's server, or ours is still binding
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server not live after {timeout} s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        return call(self.port, method, path, body, headers, timeout)

    def rss_kib(self) -> int:
        """Resident memory of the server process (and its workers), from /proc."""
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def kill(self) -> None:
        """SIGKILL the whole server (supervisor and workers), like an OOM kill of its cgroup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # no worker may outlive its supervisor
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode
