"""Device GET cost of ``IOT_CONFIG_DEVICE_AUTH=required`` against ``off``, in the same run.

Two real ``iot-config serve`` processes on one store, one per mode, pinned to CPU 0 with wrk on
CPU 1 (as `bench_server`); rounds alternate between them so machine drift hits both alike. The
``required`` server is polled with the device's own token in ``Authorization: Bearer``; both
answer 200 with the same bytes (checked before loading). Reported: median req/s of each and the
cost ratio ``off req/s / required req/s`` (time per request, required over off; target <= 1.15),
and the same ratio for a device GET through each mode's WSGI app in this process (no HTTP): the
check's own cost, steadier than the HTTP figure on a shared machine.

Run: ``python tests/benchmarks/bench_device_auth.py [--rounds N] [--seconds S] [--json PATH]``.
Needs ``wrk`` (Debian: ``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import _harness
from bench_server import (
    HOT_CONTENT,
    HOT_MAC,
    WRK,
    Load,
    Proc,
    child_env,
    http_get,
    median_load,
    run_wrk,
    running,
)
from support import PYTHON, free_port  # importable once bench_server has put tests/ on the path

from iot_config_core import open_store
from iot_config_core.device_tokens import load_keyring, new_secret_line

TARGET = 1.15
CONNECTIONS = 16
CALLS_PER_SAMPLE = 500


def server(mode: str, store: Path, secret_file: Path, workdir: Path) -> Proc:
    port = free_port()
    argv = [PYTHON, "-m", "iot_config_server.cli", "serve", "--store", str(store)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--threads", "4", "--log-level", "WARNING"]
    env = child_env(IOT_CONFIG_DEVICE_AUTH=mode, IOT_CONFIG_DEVICE_SECRET_FILE=str(secret_file))
    return Proc(f"device auth {mode}", argv, port, workdir, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=3.0, help="wrk seconds per round")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    if WRK is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-device-auth-") as tmp:
        workdir = Path(tmp)
        store = workdir / "store"
        open_store(str(store), create=True).put(HOT_MAC, HOT_CONTENT)
        secret_file = workdir / "device-secrets"
        secret_file.write_text(new_secret_line(1) + "\n")
        secret_file.chmod(0o600)
        token = load_keyring(str(secret_file)).token(HOT_MAC)
        path = f"/esp32/config/{HOT_MAC}.json"
        headers = {"required": {"Authorization": f"Bearer {token}"}, "off": {}}
        loads: dict[str, list[Load]] = {"off": [], "required": []}
        with (
            running(server("off", store, secret_file, workdir), "/api/health/live") as off,
            running(
                server("required", store, secret_file, workdir), "/api/health/live"
            ) as required,
        ):
            procs = {"off": off, "required": required}
            bodies = {mode: http_get(p.port, path, headers[mode]) for mode, p in procs.items()}
            assert bodies["off"] == bodies["required"], bodies
            assert bodies["off"][0] == 200, bodies
            assert http_get(required.port, path)[0] == 401
            for mode, proc in procs.items():  # warm-up
                run_wrk(proc.port, path, 1, CONNECTIONS, workdir, headers=headers[mode])
            for round_number in range(args.rounds):
                # Alternate which mode goes first, so neither always runs on the warmer machine.
                order = ["off", "required"] if round_number % 2 == 0 else ["required", "off"]
                for mode in order:
                    proc = procs[mode]
                    loads[mode].append(
                        run_wrk(
                            proc.port,
                            path,
                            args.seconds,
                            CONNECTIONS,
                            workdir,
                            headers=headers[mode],
                        )
                    )
        in_process = wsgi_ratio(store, secret_file, token, path)
    result = {mode: median_load(runs) for mode, runs in loads.items()}
    ratio = result["off"].rps / result["required"].rps
    for mode, load in result.items():
        print(
            f"{mode:9} {load.rps:9.0f} req/s  p50 {load.p50_ms:.2f} ms  "
            f"p99 {load.p99_ms:.2f} ms  errors {load.errors}"
        )
    per_round = [o.rps / r.rps for o, r in zip(loads["off"], loads["required"], strict=True)]
    print("per-round ratios: " + " ".join(f"{x:.3f}" for x in per_round))
    verdict = "ok" if ratio <= TARGET else "OVER TARGET"
    print(f"cost ratio required/off over HTTP: {ratio:.3f} (target <= {TARGET}: {verdict})")
    print(
        f"cost ratio required/off in-process (WSGI call, no server): {in_process[2]:.3f} "
        f"({in_process[0] * 1e6:.1f} us vs {in_process[1] * 1e6:.1f} us)"
    )
    if args.json is not None:
        rows = {mode: vars(load) for mode, load in result.items()}
        document = {"ratio": ratio, "wsgi_ratio": in_process[2], "target": TARGET, **rows}
        args.json.write_text(json.dumps(document, indent=2))
    return 0


def wsgi_ratio(store: Path, secret_file: Path, token: str, path: str) -> tuple[float, float, float]:
    """(required, off, ratio): one device GET through each mode's app, interleaved, no HTTP.

    What the check itself costs, without the noise of a loaded machine's network stack.
    """
    from iot_config_server.app import create_app  # noqa: PLC0415 -- needs the server extra
    from iot_config_server.settings import Settings  # noqa: PLC0415

    opened = open_store(str(store))
    apps = {
        mode: create_app(opened, Settings(device_auth=mode, device_secret_file=str(secret_file)))
        for mode in ("off", "required")
    }
    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    environs = {"off": base, "required": {**base, "HTTP_AUTHORIZATION": f"Bearer {token}"}}

    def start_response(status: str, _headers: object) -> None:
        assert status.startswith("200"), status

    def subject(mode: str) -> Callable[[], object]:
        app, environ = apps[mode], environs[mode]

        def calls() -> None:
            for _ in range(CALLS_PER_SAMPLE):
                app(dict(environ), start_response)

        return calls

    timings = _harness.measure(
        {mode: subject(mode) for mode in apps}, repeat=60, per_call=CALLS_PER_SAMPLE, warmup=2
    )
    required, off = timings["required"].median, timings["off"].median
    return required, off, required / off


if __name__ == "__main__":
    sys.exit(main())
