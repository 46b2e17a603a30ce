"""Crashes and replicas: SIGKILL in the middle of a PUT storm, and two servers on one store.

Crash: one writer thread per MAC PUTs numbered versions as fast as it can; the server process is
SIGKILLed at a random moment. After a restart every document must parse and be either the last
version its writer was told succeeded or the one it was sending when the server died: no
acknowledged write lost, no torn file, nothing half-written visible through the API.

Replicas: two server processes share one store directory; clients append unique tokens to one
document with GET + PUT If-Match through either server. Every 200 must be one step of a single
linear history: the final list holds exactly the acknowledged tokens, and each acknowledged answer
is a prefix of it.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from pathlib import Path

from support import JSON_HEADERS, ServerProcess, call, put_body

from iot_config_core import decode_document

from .conftest import Figure
from .support import QUIET, scaled

WRITERS = 8


def _writer(
    port: int, mac: str, acked: list[int], inflight: list[int], stop: threading.Event
) -> None:
    seq = acked[-1] if acked else 0
    while not stop.is_set():
        seq += 1
        inflight.append(seq)
        try:
            status = call(
                port, "PUT", f"/api/configs/{mac}", put_body({"seq": seq, "mac": mac}),
                JSON_HEADERS, timeout=10,
            )[0]  # fmt: skip
        except (OSError, http.client.HTTPException):
            return  # the server died under us: this version may or may not have landed
        if status != 200:
            return
        acked.append(seq)


def test_sigkill_during_put_storm(tmp_path: Path, figure: Figure) -> None:
    root = tmp_path / "configs"
    root.mkdir()
    macs = [f"02-00-00-00-02-{i:02x}" for i in range(WRITERS)]
    acked: dict[str, list[int]] = {mac: [] for mac in macs}
    rounds = int(scaled(3, 40))
    rng = random.Random(20260)
    total_acked = 0
    for round_no in range(rounds):
        server = ServerProcess("--store", str(root), log_path=tmp_path / "server.log", env=QUIET)
        # Restarted on a store a dead process left behind: everything reads back intact.
        for mac in macs:
            status, _, body = server.request("GET", f"/api/configs/{mac}")
            if acked[mac]:
                assert status == 200, body[:300]
                assert json.loads(body)["content"]["seq"] >= acked[mac][-1]
        listing = server.request("GET", "/api/configs")
        assert listing[0] == 200, (round_no, listing[2][:500], server.log()[-3000:])
        inflight: dict[str, list[int]] = {mac: [] for mac in macs}
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_writer, args=(server.port, m, acked[m], inflight[m], stop), daemon=True
            )
            for m in macs
        ]
        before = sum(len(a) for a in acked.values())
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.2, 0.8))
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
        total_acked += sum(len(a) for a in acked.values()) - before
        for mac in macs:
            path = root / f"{mac}.json"
            if not acked[mac] and not path.exists():
                continue
            content = decode_document(path.read_bytes())  # parses: not torn
            last_ack = acked[mac][-1] if acked[mac] else 0
            allowed = {last_ack, *(s for s in inflight[mac] if s > last_ack)}
            assert content["seq"] in allowed, (round_no, mac, content, last_ack)
            assert content["seq"] >= last_ack, f"acknowledged write lost: {mac} round {round_no}"
        server.stop()
    leftovers = len([p for p in root.iterdir() if p.name.endswith(".tmp")])
    # A final server sees exactly the documents, none skipped, temp files invisible.
    server = ServerProcess("--store", str(root), log_path=tmp_path / "server.log", env=QUIET)
    try:
        listing = json.loads(server.request("GET", "/api/configs")[2])
        items = listing if isinstance(listing, list) else next(iter(listing.values()))
        assert len(items) == len([m for m in macs if (root / f"{m}.json").exists()])
        for mac in macs:
            status = server.request(
                "PUT", f"/api/configs/{mac}", put_body({"seq": -1}), JSON_HEADERS
            )[0]
            assert status == 200  # locks held by killed processes were released with them
    finally:
        server.stop()
    figure("SIGKILL rounds", rounds)
    figure("acknowledged PUTs checked after kills", total_acked)
    figure("temp files left after all kills (hidden, reaped after 15 min)", leftovers)


def _appender(
    ports: list[int],
    mac: str,
    name: str,
    count: int,
    acked: list[tuple[str, list[str]]],
    stats: dict[str, int],
    lock: threading.Lock,
    deadline: float,
) -> None:
    for i in range(count):
        token = f"{name}-{i}"
        while time.monotonic() < deadline:
            port = random.choice(ports)
            status, headers, body = call(port, "GET", f"/api/configs/{mac}")
            assert status == 200, body[:200]
            tokens = json.loads(body)["content"]["tokens"]
            status, _, body = call(
                random.choice(ports),
                "PUT",
                f"/api/configs/{mac}",
                put_body({"tokens": [*tokens, token]}),
                {**JSON_HEADERS, "If-Match": headers["etag"]},
            )
            if status == 200:
                with lock:
                    acked.append((token, json.loads(body)["content"]["tokens"]))
                break
            assert status == 412, (status, body[:300])
            with lock:
                stats["412"] += 1


def test_two_servers_one_store_conditional_appends(tmp_path: Path, figure: Figure) -> None:
    root = tmp_path / "configs"
    root.mkdir()
    one = ServerProcess("--store", str(root), log_path=tmp_path / "one.log", env=QUIET)
    two = ServerProcess("--store", str(root), log_path=tmp_path / "two.log", env=QUIET)
    mac = "02-00-00-00-03-01"
    clients = 6
    count = int(scaled(15, 150))
    acked: list[tuple[str, list[str]]] = []
    stats = {"412": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + scaled(40, 400)
    try:
        assert one.request("PUT", f"/api/configs/{mac}", put_body({"tokens": []}), JSON_HEADERS)[
            0
        ] in (200, 201)
        threads = [
            threading.Thread(
                target=_appender,
                args=([one.port, two.port], mac, f"c{c}", count, acked, stats, lock, deadline),
            )
            for c in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = json.loads(two.request("GET", f"/api/configs/{mac}")[2])["content"]["tokens"]
    finally:
        one.stop()
        two.stop()
    assert len(acked) == clients * count, "clients ran out of time"
    assert sorted(final) == sorted(token for token, _ in acked)
    assert len(set(final)) == len(final)
    for token, history in acked:
        assert final[: len(history)] == history, f"{token}: acknowledged state not in history"
        assert history[-1] == token
    for c in range(clients):
        mine = [t for t in final if t.startswith(f"c{c}-")]
        assert mine == [f"c{c}-{i}" for i in range(count)]
    figure("conditional appends acknowledged through 2 servers", len(acked))
    figure("412 retries", stats["412"])
