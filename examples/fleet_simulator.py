"""Simulate a fleet of ESP32 devices polling the server for their configs.

    . .venv/bin/activate          # the environment of the README's install
    iot-config serve &            # a server to poll (stop it with: kill %1)
    python3 examples/fleet_simulator.py --url http://127.0.0.1:8080 --devices 50 --polls 10

Each simulated device has its own keep-alive connection (a thread), or with ``--connections N``
the devices share N connections, each polling its devices in turn (100,000 devices on 200
connections: a fleet behind NATs, without 100,000 threads). A device fetches
``GET /esp32/config/<mac>.json`` the way the firmware does: the first time without a condition,
then with ``If-None-Match: <last ETag>``, so an unchanged config costs the server a 304 and no
body. At the end it reports how many answers were 200, 304, 404, other statuses and connection
errors, and the p50/p99 latency of the answers. Every run is bounded (``--polls`` per device and
``--duration`` overall) and only talks to the loopback unless ``--allow-remote`` is given.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from iot_config_core import InvalidMacError, MacAddress

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_DEVICES = 100_000
#: Threads, each with its own connection (a device each, unless there are more devices).
MAX_CONNECTIONS = 2000
MAX_POLLS = 10_000
MAX_SECONDS = 86_400


class Tally:
    """Answers by kind and request latencies, shared by all connection threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.seconds: list[float] = []

    def add(self, kind: str, seconds: float | None = None) -> None:
        with self._lock:
            self.counts[kind] += 1
            if seconds is not None:
                self.seconds.append(seconds)

    def percentile_ms(self, fraction: float) -> float | None:
        """The latency below which ``fraction`` of the answered requests fell, in ms."""
        with self._lock:
            ordered = sorted(self.seconds)
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def fetch(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str]
) -> tuple[http.client.HTTPResponse, bytes]:
    """One GET; a kept-alive connection the server has since closed is reopened once."""
    for attempt in (1, 2):
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response, response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if attempt == 2:
                raise
    raise AssertionError


def connection(
    host: str,
    port: int,
    macs: Sequence[MacAddress],
    *,
    polls: int,
    interval: float,
    deadline: float,
    tally: Tally,
) -> None:
    """The devices ``macs`` behind one keep-alive connection, polling in turn; never raise.

    Each device polls every ``interval`` seconds (with jitter) and remembers its own ETag, so
    one connection can stand for many devices (a fleet behind a NAT or a proxy).
    """
    conn = http.client.HTTPConnection(host, port, timeout=10)
    etags: list[str | None] = [None] * len(macs)
    # Devices start spread over the first interval, as a fleet that was not switched on at once.
    step = interval / len(macs)
    next_at = [time.monotonic() + i * step for i in range(len(macs))]
    try:
        for _ in range(polls):
            for index, mac in enumerate(macs):
                wait = next_at[index] - time.monotonic()
                if wait > 0:
                    time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    return
                poll(conn, mac, etags, index, tally)
                # Jitter keeps simulated devices from polling in lockstep, as real ones do not.
                next_at[index] += interval * random.uniform(0.5, 1.5)  # noqa: S311 -- not crypto
    finally:
        conn.close()


def poll(
    conn: http.client.HTTPConnection,
    mac: MacAddress,
    etags: list[str | None],
    index: int,
    tally: Tally,
) -> None:
    """One device's poll: with ``If-None-Match`` once it has an ETag, as the firmware does."""
    etag = etags[index]
    headers = {"If-None-Match": etag} if etag else {}
    started = time.perf_counter()
    try:
        response, body = fetch(conn, f"/esp32/config/{mac}.json", headers)
    except (OSError, http.client.HTTPException):
        tally.add("error")
        conn.close()  # the next request reconnects
        return
    status = response.status
    if status == 200:
        json.loads(body)  # a device parses what it gets; a bad body would be a bug
        etags[index] = response.getheader("ETag")
    kind = str(status) if status in (200, 304, 404) else f"other:{status}"
    tally.add(kind, time.perf_counter() - started)


def device_macs(first: MacAddress, count: int, explicit: Sequence[MacAddress]) -> list[MacAddress]:
    if explicit:
        return list(explicit)
    return [MacAddress((first.value + i) % (1 << 48)) for i in range(count)]


def _mac(text: str) -> MacAddress:
    try:
        return MacAddress.parse(text)
    except InvalidMacError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _number(convert: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a number from ``low`` to ``high`` (``convert`` is `int` or `float`)."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be {low:g}..{high:g}, not {text}")
        return value

    return parse


def _http_url(text: str) -> tuple[str, int]:
    """``http://host[:port]`` as ``(host, port)``."""
    url = urlsplit(text)
    try:
        port = url.port or 80
    except ValueError:
        port = -1
    if url.scheme != "http" or not url.hostname or port < 0:
        raise argparse.ArgumentTypeError(f"must be http://host[:port], not {text!r}")
    return url.hostname, port


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        type=_http_url,
        default=("127.0.0.1", 8080),
        help="server base URL (default http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--devices",
        type=_number(int, 1, MAX_DEVICES),
        default=10,
        help=f"devices (1..{MAX_DEVICES}, default 10)",
    )
    parser.add_argument(
        "--connections",
        type=_number(int, 1, MAX_CONNECTIONS),
        default=None,
        help="keep-alive connections the devices share, each a thread (default: one per "
        f"device, at most {MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--first-mac",
        type=_mac,
        default=MacAddress.parse("02-00-00-00-00-00"),
        help="MAC of device 0; the rest count up (default 02-00-00-00-00-00)",
    )
    parser.add_argument(
        "--mac", type=_mac, action="append", default=[], help="explicit device MAC (repeatable)"
    )
    parser.add_argument(
        "--polls",
        type=_number(int, 1, MAX_POLLS),
        default=5,
        help=f"polls per device (1..{MAX_POLLS}, default 5)",
    )
    parser.add_argument(
        "--interval",
        type=_number(float, 0, MAX_SECONDS),
        default=1.0,
        help="seconds between polls (default 1)",
    )
    parser.add_argument(
        "--duration",
        type=_number(float, 0, MAX_SECONDS),
        default=60.0,
        help="stop after this many seconds (default 60)",
    )
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback host")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    host, port = args.url
    if host not in LOOPBACK and not args.allow_remote:
        print(f"refusing to load {host}: pass --allow-remote to mean it", file=sys.stderr)
        return 2
    macs = device_macs(args.first_mac, args.devices, args.mac)
    tally = Tally()
    started = time.monotonic()
    deadline = started + args.duration
    count = min(len(macs), args.connections or MAX_CONNECTIONS)
    threads = [
        threading.Thread(
            target=connection,
            args=(host, port, macs[index::count]),
            kwargs={
                "polls": args.polls,
                "interval": args.interval,
                "deadline": deadline,
                "tally": tally,
            },
            daemon=True,
        )
        for index in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 15)
    seconds = time.monotonic() - started
    others = {k.split(":")[1]: n for k, n in sorted(tally.counts.items()) if k.startswith("other:")}
    counts = {kind: tally.counts.get(kind, 0) for kind in ("200", "304", "404", "error")}
    counts["other"] = sum(others.values())
    p50, p99 = tally.percentile_ms(0.5), tally.percentile_ms(0.99)
    if args.json:
        report = {"devices": len(macs), "requests": sum(counts.values()), **counts}
        latency = {"p50_ms": p50, "p99_ms": p99, "connections": count}
        print(
            json.dumps(
                {**report, "other_statuses": others, "seconds": round(seconds, 3), **latency}
            )
        )
    else:
        shown = " ".join(f"{kind}={n}" for kind, n in counts.items())
        detail = f" ({', '.join(f'{k}: {n}' for k, n in others.items())})" if others else ""
        total = sum(counts.values())
        timing = "" if p50 is None or p99 is None else f"; p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        print(
            f"{len(macs)} devices on {count} connections, {total} requests in {seconds:.2f} s: "
            f"{shown}{detail}{timing}"
        )
    return 1 if counts["error"] or counts["other"] else 0


if __name__ == "__main__":
    sys.exit(main())
