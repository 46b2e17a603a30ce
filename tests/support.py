"""Helpers shared by the tests, the reliability suite and the benchmarks: real child processes.

Free ports, the environment of a child Python, tools found beside this interpreter, one HTTP
request over a fresh connection, and `ServerProcess`: the real server started, probed and stopped.
Not a conftest: modules import what they use (the benchmarks run as scripts, outside pytest).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: The production entry point, ``iot-config serve``, as arguments of the Python interpreter.
SERVE = ("-m", "iot_config_server.cli", "serve")
JSON_HEADERS = {"Content-Type": "application/json"}

Answer = tuple[int, dict[str, str], bytes]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago (the kernel picks)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listened on a moment ago."""
    return free_ports(1)[0]


def tool(name: str) -> str | None:
    """The executable ``name``: beside this interpreter first, then on ``PATH``.

    A virtual environment's scripts (``schemathesis``, ``granian``, ...) sit beside its Python,
    and its ``bin`` is on ``PATH`` only when the environment is activated.
    """
    beside = Path(PYTHON).parent / name  # not resolved: a venv's python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python: this repository importable, output unbuffered.

    Settings variables (``IOT_CONFIG_*`` and the old service's names) are left out, so that a
    developer's shell cannot point a test server elsewhere; ``extra`` sets what a test needs.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("IOT_CONFIG_") and key not in {"ESP32_CONFIGS_DIR", "CORS_ORIGINS"}
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One request to 127.0.0.1 over a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def put_body(content: object) -> bytes:
    """The JSON body of ``PUT /api/configs/<mac>`` that stores ``content``."""
    return json.dumps({"content": content}).encode()


class ServerProcess:
    """The real server in a child process on 127.0.0.1: started, probed, stopped or killed.

    Runs ``python -m iot_config_server.cli serve ARGS`` (or ``python PROGRAM ARGS``) in a session
    of its own, so that stopping it reaches every worker, in ``cwd`` (default: the directory of
    ``log_path``, where a server given no store creates its default one). Without ``port`` it
    picks a free one and adds ``--host 127.0.0.1 --port N``; with ``port`` the arguments or
    ``env`` already say where it listens. Output goes to ``log_path``, appended (a restarted
    server keeps one log). As a context manager, it is stopped on exit.
    """

    def __init__(
        self,
        *args: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        port: int | None = None,
        program: Sequence[str] = SERVE,
        wait: bool = True,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        # Other test sessions start servers on random ports too: a port can be taken between
        # picking it and binding it, and then the readiness probe would reach *their* server.
        # So readiness also requires that our process group holds the listening socket.
        for _ in range(1 if port is not None else 5):
            self.port = port if port is not None else free_port()
            where = [] if port is not None else ["--host", "127.0.0.1", "--port", str(self.port)]
            self.proc = subprocess.Popen(
                [PYTHON, *program, *args, *where],
                cwd=cwd or log_path.parent,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=child_env(**(env or {})),
                start_new_session=True,  # one process group: stopping it reaches the workers
            )
            try:
                if not wait or self.wait_ready():
                    return
            except BaseException:
                self.stop()
                raise
            self.kill()
        self._log.close()
        raise RuntimeError(f"could not start a server of our own: {self.log()[-2000:]}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        """`call` on this server's port."""
        return call(self.port, method, path, body, headers, timeout)

    def pids(self) -> list[int]:
        """The server process and its direct children (the workers)."""
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
                if fields[1].endswith(f":{self.port:04X}") and fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        link = os.readlink(fd)
                        if link.startswith("socket:[") and link[8:-1] in inodes:
                            return True
        return False

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait until our server answers liveness; False when the port turned out not ours.

        Raises `RuntimeError` with the end of the log when the server exits or stays silent.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "cannot listen" in self.log()[-2000:]:
                    return False
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                if self.request("GET", "/api/health/live", timeout=2)[0] == 200:
                    if self.owns_port():
                        return True
                    time.sleep(0.1)  # someone else's server, or ours is still binding
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
        raise RuntimeError(f"server not live after {timeout} s: {self.log()[-3000:]}")

    def rss_kib(self) -> int:
        """Resident memory of the server process and its workers, from /proc."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, as an orchestrator sends it; the exit status once the server has stopped."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole server (supervisor and workers), like an OOM kill of its cgroup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """Stop it as an orchestrator would: SIGTERM, SIGKILL after 30 s; no worker outlives it.

        SIGKILL to the supervisor alone would orphan a worker, still serving, so the whole
        process group gets it. The exit status (negative: the signal that ended it).
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        status = self.proc.wait(10)
        self._log.close()
        return status
