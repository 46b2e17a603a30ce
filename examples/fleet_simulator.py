"""Simulate a fleet of ESP32 devices polling the server for their configs.

    . .venv/bin/activate          # the environment of the README's install
    iot-config serve &            # a server to poll (stop it with: kill %1)
    python3 examples/fleet_simulator.py --url http://127.0.0.1:8080 --devices 50 --polls 10

Each simulated device is a thread with its own keep-alive connection. It fetches
``GET /esp32/config/<mac>.json`` the way the firmware does: the first time without a condition,
then with ``If-None-Match: <last ETag>``, so an unchanged config costs the server a 304 and no
body. At the end it reports how many answers were 200, 304, 404, other statuses and connection
errors. Every run is bounded (``--polls`` per device and ``--duration`` overall) and only talks to
the loopback unless ``--allow-remote`` is given.
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
MAX_DEVICES = 2000
MAX_POLLS = 10_000
MAX_SECONDS = 86_400


class Tally:
    """Answers by kind, shared by all device threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1


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


def device(
    host: str,
    port: int,
    mac: MacAddress,
    *,
    polls: int,
    interval: float,
    deadline: float,
    tally: Tally,
) -> None:
    """One device's life: poll, remember the ETag, sleep, repeat; never raise."""
    path = f"/esp32/config/{mac}.json"
    conn = http.client.HTTPConnection(host, port, timeout=10)
    etag: str | None = None
    try:
        for poll in range(polls):
            if time.monotonic() >= deadline:
                return
            headers = {"If-None-Match": etag} if etag else {}
            try:
                response, body = fetch(conn, path, headers)
            except (OSError, http.client.HTTPException):
                tally.add("error")
                conn.close()  # the next request reconnects
            else:
                status = response.status
                if status == 200:
                    json.loads(body)  # a device parses what it gets; a bad body would be a bug
                    etag = response.getheader("ETag")
                tally.add(str(status) if status in (200, 304, 404) else f"other:{status}")
            if poll + 1 < polls:
                # Jitter keeps simulated devices from polling in lockstep, as real ones do not.
                pause = interval * random.uniform(0.5, 1.5)  # noqa: S311 -- not crypto
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
    finally:
        conn.close()


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
    threads = [
        threading.Thread(
            target=device,
            args=(host, port, mac),
            kwargs={
                "polls": args.polls,
                "interval": args.interval,
                "deadline": deadline,
                "tally": tally,
            },
            daemon=True,
        )
        for mac in macs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 15)
    seconds = time.monotonic() - started
    others = {k.split(":")[1]: n for k, n in sorted(tally.counts.items()) if k.startswith("other:")}
    counts = {kind: tally.counts.get(kind, 0) for kind in ("200", "304", "404", "error")}
    counts["other"] = sum(others.values())
    if args.json:
        report = {"devices": len(macs), "requests": sum(counts.values()), **counts}
        print(json.dumps({**report, "other_statuses": others, "seconds": round(seconds, 3)}))
    else:
        shown = " ".join(f"{kind}={n}" for kind, n in counts.items())
        detail = f" ({', '.join(f'{k}: {n}' for k, n in others.items())})" if others else ""
        total = sum(counts.values())
        print(f"{len(macs)} devices, {total} requests in {seconds:.2f} s: {shown}{detail}")
    return 1 if counts["error"] or counts["other"] else 0


if __name__ == "__main__":
    sys.exit(main())
