"""Two server replicas, one store: real server processes on 127.0.0.1 sharing one root.

Production runs several replicas behind a load balancer on one CephFS directory (or one bucket).
Here two real server processes share a local directory, a bucket on a real S3 server (moto), and,
when ``IOT_CONFIG_TEST_CEPHFS`` names a ceph-fuse mount, a CephFS directory seen through two
separate mounts (one per replica). Clients hammer both with GET + conditional PUT:

- no lost update: every 200 to a ``PUT If-Match`` is exactly one step of the document's history;
- each replica's list and device endpoint show the other's writes on the very next request;
- ``/metrics`` config counts of the two replicas agree after a list;
- the version history both replicas show holds every acknowledged write exactly once, in order.

The replicas run ``python -m iot_config_server.cli serve`` (the production entry point). Until
that runner exists they run the same app (`create_app`) under waitress, and say so in the log.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_server import ACCESS_KEY, SECRET_KEY, free_ports, moto_server
from test_store_ceph import ceph_dirs  # noqa: F401 - the fixture, for the cephfs replicas

import iot_config_core

MAC = "02-00-00-00-aa-01"
OTHER = "02-00-00-00-aa-02"
CLIENTS = 4
APPENDS_PER_CLIENT = 15
TIME_BUDGET_SECONDS = 60.0
# Enough versions per device for every write of the race to stay in the history.
HISTORY_LIMIT = CLIENTS * APPENDS_PER_CLIENT + 10

# The same app as the production runner, for as long as `iot_config_server.serve` is missing.
FALLBACK = """
import os, sys, attrs, waitress
from iot_config_core import open_store
from iot_config_server.app import create_app
from iot_config_server.settings import Settings
url, port = sys.argv[1], int(sys.argv[2])
settings = attrs.evolve(Settings.from_env(os.environ), store_url=url, host="127.0.0.1", port=port)
print("iot_config_server.serve missing: serving create_app with waitress", flush=True)
waitress.serve(create_app(open_store(url), settings), host="127.0.0.1", port=port, threads=8)
"""

Answer = tuple[int, dict[str, str], bytes]


def _env(extra: dict[str, str]) -> dict[str, str]:
    package_parent = str(Path(iot_config_core.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "IOT_CONFIG_LOG_LEVEL": "WARNING",
        "IOT_CONFIG_HISTORY_LIMIT": str(HISTORY_LIMIT),
        **extra,
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


class Replica:
    """One server process on its own port over the shared store URL."""

    def __init__(self, url: str, log: Path, env: dict[str, str]) -> None:
        (self.port,) = free_ports(1)
        if importlib.util.find_spec("iot_config_server.serve") is not None:
            args = [
                *(sys.executable, "-m", "iot_config_server.cli", "serve"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--store", url),
            ]
        else:
            args = [sys.executable, "-c", FALLBACK, url, str(self.port)]
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=_env(env)
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/api/health/live")[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica not live in 30 s: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = None if body is None else json.dumps({"content": body}).encode()
            sent = {**({"Content-Type": "application/json"} if data else {}), **(headers or {})}
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, mac: str) -> tuple[dict[str, Any], str]:
        status, headers, data = self.request("GET", f"/api/configs/{mac}")
        assert status == 200, (status, data[:300])
        return json.loads(data)["content"], headers["etag"]

    def versions(self, mac: str) -> list[dict[str, Any]]:
        status, _, data = self.request("GET", f"/api/configs/{mac}/history")
        assert status == 200, (status, data[:300])
        versions: list[dict[str, Any]] = json.loads(data)["versions"]
        return versions

    def listed(self) -> dict[str, str | None]:
        """MAC -> device name of every config the replica lists."""
        status, _, data = self.request("GET", "/api/configs")
        assert status == 200, data[:300]
        body = json.loads(data)
        assert body["count"] == len(body["configs"])
        return {item["mac_address"]: item["device_name"] for item in body["configs"]}

    def config_count(self) -> float:
        status, _, data = self.request("GET", "/metrics")
        assert status == 200
        match = re.search(rb"^iot_config_configs (\S+)$", data, re.MULTILINE)
        assert match, data[:2000]
        return float(match.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(params=["local", "s3", "cephfs"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    """Two replicas on one store of the kind named by the parameter."""
    with contextlib.ExitStack() as stack:
        urls: tuple[str, str]
        env: dict[str, str] = {}
        if request.param == "local":
            root = tmp_path / "configs"
            root.mkdir()
            urls = (str(root), str(root))
        elif request.param == "s3":
            server = stack.enter_context(moto_server())
            env = {
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": server.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            url = f"s3://replicas/{uuid.uuid4().hex}"
            setup = f"from iot_config_core import open_store; open_store({url!r}, create=True)"
            subprocess.run([sys.executable, "-c", setup], env=_env(env), check=True, timeout=60)
            urls = (url, url)
        else:
            first, second = request.getfixturevalue("ceph_dirs")
            work = Path(tempfile.mkdtemp(dir=first))
            stack.callback(shutil.rmtree, work, ignore_errors=True)
            urls = (str(work), str(second / work.name))  # one mount per replica
        one = Replica(urls[0], tmp_path / "one.log", env)
        stack.callback(one.stop)
        two = Replica(urls[1], tmp_path / "two.log", env)
        stack.callback(two.stop)
        yield one, two


def _append_loop(
    replicas: tuple[Replica, Replica],
    client: int,
    acked: list[str],
    problems: list[str],
    lock: threading.Lock,
    deadline: float,
) -> None:
    """Append unique tokens to MAC's history through alternating replicas, retrying on 412."""
    for n in range(APPENDS_PER_CLIENT):
        token = f"c{client}-{n}"
        for attempt in range(200):
            if time.monotonic() > deadline:
                return
            replica = replicas[(client + n + attempt) % 2]
            content, etag = replica.get(MAC)
            new = {"history": [*content["history"], token]}
            status, _, data = replica.request("PUT", f"/api/configs/{MAC}", new, {"If-Match": etag})
            if status == 200:
                with lock:
                    acked.append(token)
                break
            if status != 412:
                with lock:
                    problems.append(f"{token}: {status} {data[:200]!r}")
                return
        else:
            with lock:
                problems.append(f"{token}: lost 200 races in a row")


@pytest.mark.slow
def test_conditional_puts_through_two_replicas_lose_no_update(
    replicas: tuple[Replica, Replica],
) -> None:
    one, two = replicas
    status, _, data = one.request("PUT", f"/api/configs/{MAC}", {"history": []})
    assert status in (200, 201), data[:300]
    acked: list[str] = []
    problems: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    threads = [
        threading.Thread(target=_append_loop, args=(replicas, c, acked, problems, lock, deadline))
        for c in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIME_BUDGET_SECONDS + 60)
    assert problems == []
    assert len(acked) == CLIENTS * APPENDS_PER_CLIENT, "time budget ran out"
    for replica in (one, two):
        history = replica.get(MAC)[0]["history"]
        assert sorted(history) == sorted(acked)  # every 200 is in it, exactly once
        assert len(set(history)) == len(history)
        for client in range(CLIENTS):  # and each client's appends are in its order
            mine = [t for t in history if t.startswith(f"c{client}-")]
            assert mine == [f"c{client}-{n}" for n in range(APPENDS_PER_CLIENT)]
    # The version history: every acknowledged write once, in order, the same on both replicas.
    versions = one.versions(MAC)
    assert versions == two.versions(MAC)
    assert versions[0]["etag"] == one.get(MAC)[1].strip('"')
    assert len(versions) == len(acked) + 1  # and the first, empty version
    assert len({v["etag"] for v in versions}) == len(versions)
    assert {v["source"] for v in versions} == {"api"}
    assert len({v["request_id"] for v in versions}) == len(versions)
    final = one.get(MAC)[0]["history"]
    for age, version in enumerate(versions):  # newest first: each is the final one, shorter
        status, _, data = two.request("GET", f"/api/configs/{MAC}/history/{version['etag']}")
        assert status == 200, data[:300]
        assert json.loads(data)["content"]["history"] == final[: len(final) - age]


def test_each_replica_sees_the_others_writes_on_the_next_request(
    replicas: tuple[Replica, Replica],
) -> None:
    one, two = replicas
    device = f"/esp32/config/{OTHER}.json"
    assert two.listed() == {}
    assert two.request("GET", device)[0] == 404

    status, headers, _ = one.request("PUT", f"/api/configs/{OTHER}", {"deviceName": "one"})
    assert status in (200, 201)
    created = headers["etag"]
    assert two.listed() == {OTHER: "one"}
    status, headers, body = two.request("GET", device)
    assert (status, headers["etag"]) == (200, created)
    assert json.loads(body) == {"deviceName": "one"}
    assert one.request("GET", device)[0] == 200  # now cached on both replicas

    status, headers, _ = two.request(
        "PUT", f"/api/configs/{OTHER}", {"deviceName": "two"}, {"If-Match": created}
    )
    assert status == 200
    updated = headers["etag"]
    status, headers, body = one.request("GET", device)
    assert (status, headers["etag"], json.loads(body)) == (200, updated, {"deviceName": "two"})
    assert one.get(OTHER) == ({"deviceName": "two"}, updated)

    stale = one.request(
        "PUT", f"/api/configs/{OTHER}", {"deviceName": "stale"}, {"If-Match": created}
    )
    assert stale[0] == 412

    assert one.listed() == two.listed() == {OTHER: "two"}
    assert one.config_count() == two.config_count() == 1

    assert one.request("DELETE", f"/api/configs/{OTHER}", headers={"If-Match": updated})[0] in (
        200,
        204,
    )
    assert two.request("GET", device)[0] == 404
    assert two.listed() == {}
    assert one.listed() == {}
    assert one.config_count() == two.config_count() == 0
    versions = two.versions(OTHER)
    assert [(v["etag"], v["deleted"]) for v in versions] == [
        (None, True),
        (updated.strip('"'), False),
        (created.strip('"'), False),
    ]
