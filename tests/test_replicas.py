"""Two server replicas, one store: real server processes on 127.0.0.1 sharing one root.

Production runs several replicas behind a load balancer on one CephFS directory (or one bucket).
Here two real server processes share a local directory, a bucket on a real S3 server (moto), and,
when ``IOT_CONFIG_TEST_CEPHFS`` names a ceph-fuse mount, a CephFS directory seen through two
separate mounts (one per replica). Clients hammer both with GET + conditional PUT:

- no lost update: every 200 to a ``PUT If-Match`` is exactly one step of the document's history;
- each replica's list and device endpoint show the other's writes on the very next request;
- ``/metrics`` config counts of the two replicas agree after a list;
- the version history both replicas show holds every acknowledged write exactly once, in order.

The replicas run ``python -m iot_config_server.cli serve``, the production entry point.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_server import ACCESS_KEY, SECRET_KEY, moto_server
from support import JSON_HEADERS, PYTHON, Answer, ServerProcess, child_env, put_body
from test_store_ceph import ceph_dirs  # noqa: F401 - the fixture, for the cephfs replicas

MAC = "02-00-00-00-aa-01"
OTHER = "02-00-00-00-aa-02"
CLIENTS = 4
APPENDS_PER_CLIENT = 15
TIME_BUDGET_SECONDS = 60.0
# Enough versions per device for every write of the race to stay in the history.
HISTORY_LIMIT = CLIENTS * APPENDS_PER_CLIENT + 10

Pair = tuple[ServerProcess, ServerProcess]


def put(
    replica: ServerProcess, mac: str, content: Any, headers: dict[str, str] | None = None
) -> Answer:
    return replica.request(
        "PUT", f"/api/configs/{mac}", put_body(content), {**JSON_HEADERS, **(headers or {})}
    )


def get(replica: ServerProcess, mac: str) -> tuple[dict[str, Any], str]:
    status, headers, data = replica.request("GET", f"/api/configs/{mac}")
    assert status == 200, (status, data[:300])
    return json.loads(data)["content"], headers["etag"]


def listed(replica: ServerProcess) -> dict[str, str | None]:
    """MAC -> device name of every config the replica lists."""
    status, _, data = replica.request("GET", "/api/configs")
    assert status == 200, data[:300]
    body = json.loads(data)
    assert body["count"] == len(body["configs"])
    return {item["mac_address"]: item["device_name"] for item in body["configs"]}


def versions(replica: ServerProcess, mac: str) -> list[dict[str, Any]]:
    status, _, data = replica.request("GET", f"/api/configs/{mac}/history")
    assert status == 200, (status, data[:300])
    found: list[dict[str, Any]] = json.loads(data)["versions"]
    return found


def config_count(replica: ServerProcess) -> float:
    status, _, data = replica.request("GET", "/metrics")
    assert status == 200
    match = re.search(rb"^iot_config_configs (\S+)$", data, re.MULTILINE)
    assert match, data[:2000]
    return float(match.group(1))


@pytest.fixture(params=["local", "s3", "cephfs"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
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
            subprocess.run([PYTHON, "-c", setup], env=child_env(**env), check=True, timeout=60)
            urls = (url, url)
        else:
            first, second = request.getfixturevalue("ceph_dirs")
            work = Path(tempfile.mkdtemp(dir=first))
            stack.callback(shutil.rmtree, work, ignore_errors=True)
            urls = (str(work), str(second / work.name))  # one mount per replica
        env = {**env, "IOT_CONFIG_HISTORY_LIMIT": str(HISTORY_LIMIT)}
        one = stack.enter_context(
            ServerProcess("--store", urls[0], log_path=tmp_path / "one.log", env=env)
        )
        two = stack.enter_context(
            ServerProcess("--store", urls[1], log_path=tmp_path / "two.log", env=env)
        )
        yield one, two


def _append_loop(
    replicas: Pair,
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
            content, etag = get(replica, MAC)
            new = {"history": [*content["history"], token]}
            status, _, data = put(replica, MAC, new, {"If-Match": etag})
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
    replicas: Pair,
) -> None:
    one, two = replicas
    status, _, data = put(one, MAC, {"history": []})
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
        history = get(replica, MAC)[0]["history"]
        assert sorted(history) == sorted(acked)  # every 200 is in it, exactly once
        assert len(set(history)) == len(history)
        for client in range(CLIENTS):  # and each client's appends are in its order
            mine = [t for t in history if t.startswith(f"c{client}-")]
            assert mine == [f"c{client}-{n}" for n in range(APPENDS_PER_CLIENT)]
    # The version history: every acknowledged write once, in order, the same on both replicas.
    shown = versions(one, MAC)
    assert shown == versions(two, MAC)
    assert shown[0]["etag"] == get(one, MAC)[1].strip('"')
    assert len(shown) == len(acked) + 1  # and the first, empty version
    assert len({v["etag"] for v in shown}) == len(shown)
    assert {v["source"] for v in shown} == {"api"}
    assert len({v["request_id"] for v in shown}) == len(shown)
    final = get(one, MAC)[0]["history"]
    for age, version in enumerate(shown):  # newest first: each is the final one, shorter
        status, _, data = two.request("GET", f"/api/configs/{MAC}/history/{version['etag']}")
        assert status == 200, data[:300]
        assert json.loads(data)["content"]["history"] == final[: len(final) - age]


def test_each_replica_sees_the_others_writes_on_the_next_request(
    replicas: Pair,
) -> None:
    one, two = replicas
    device = f"/esp32/config/{OTHER}.json"
    assert listed(two) == {}
    assert two.request("GET", device)[0] == 404

    status, headers, _ = put(one, OTHER, {"deviceName": "one"})
    assert status in (200, 201)
    created = headers["etag"]
    assert listed(two) == {OTHER: "one"}
    status, headers, body = two.request("GET", device)
    assert (status, headers["etag"]) == (200, created)
    assert json.loads(body) == {"deviceName": "one"}
    assert one.request("GET", device)[0] == 200  # now cached on both replicas

    status, headers, _ = put(two, OTHER, {"deviceName": "two"}, {"If-Match": created})
    assert status == 200
    updated = headers["etag"]
    status, headers, body = one.request("GET", device)
    assert (status, headers["etag"], json.loads(body)) == (200, updated, {"deviceName": "two"})
    assert get(one, OTHER) == ({"deviceName": "two"}, updated)

    stale = put(one, OTHER, {"deviceName": "stale"}, {"If-Match": created})
    assert stale[0] == 412

    assert listed(one) == listed(two) == {OTHER: "two"}
    assert config_count(one) == config_count(two) == 1

    assert one.request("DELETE", f"/api/configs/{OTHER}", headers={"If-Match": updated})[0] in (
        200,
        204,
    )
    assert two.request("GET", device)[0] == 404
    assert listed(two) == {}
    assert listed(one) == {}
    assert config_count(one) == config_count(two) == 0
    assert [(v["etag"], v["deleted"]) for v in versions(two, OTHER)] == [
        (None, True),
        (updated.strip('"'), False),
        (created.strip('"'), False),
    ]
