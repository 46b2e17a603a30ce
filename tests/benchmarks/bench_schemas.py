"""Benchmarks of JSON Schema validation and partial updates, as ratios within one run.

- the validator choice: jsonschema (draft 2020-12, and the draft-07 validator the store uses to
  list problems) against fastjsonschema's compiled draft-07 validator, per typical config;
- PUT with a realistic schema against PUT with none, two stores on the same disk, interleaved
  (target: at most 1.1 times);
- PATCH (a one-key merge patch: read, apply, conditional write) against PUT;
- checking a whole store against its schema (`ConfigStore.schema_report`) against reading every
  config without checking (`get` of each listed config).

    python3 tests/benchmarks/bench_schemas.py          # 10,000 configs for the store check
    python3 tests/benchmarks/bench_schemas.py --quick  # small sizes, a few seconds
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import Report, common_arguments, measure
from bench_core import populate, typical_config

if importlib.util.find_spec("iot_config_core") is None:
    sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import fastjsonschema
import jsonschema

from iot_config_core import ConfigStore, MacAddress, MergePatch, open_store

FULL = {"validations": 2000, "puts": 300, "fleet": 10_000, "fleet_rounds": 3}
QUICK = {"validations": 200, "puts": 30, "fleet": 500, "fleet_rounds": 2}

_PIN = {"type": "integer", "minimum": 0, "maximum": 39}
#: What a firmware team would write for the benchmark's typical config: types, ranges, enums,
#: required keys, nested objects and an array of sensor objects.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["deviceName", "enableOTA", "wifi", "mqtt", "sensors", "pollIntervalSeconds"],
    "properties": {
        "deviceName": {"type": "string", "minLength": 1, "maxLength": 64},
        "deviceEntityId": {"type": "string", "pattern": "^[a-z_]+\\.[a-z0-9_]+$"},
        "enableOTA": {"type": "boolean"},
        "otaUrl": {"type": "string", "format": "uri"},
        "firmwareChannel": {"enum": ["stable", "beta"]},
        "logLevel": {"enum": ["error", "warn", "info", "debug"]},
        "pollIntervalSeconds": {"type": "integer", "minimum": 5, "maximum": 86400},
        "sleepMode": {"enum": ["none", "light", "deep"]},
        "wifi": {
            "type": "object",
            "required": ["ssid", "password"],
            "properties": {
                "ssid": {"type": "string", "maxLength": 32},
                "password": {"type": "string", "minLength": 8, "maxLength": 64},
                "channel": {"type": "integer", "minimum": 1, "maximum": 14},
                "hidden": {"type": "boolean"},
                "staticIp": {"type": ["string", "null"]},
            },
        },
        "mqtt": {
            "type": "object",
            "required": ["host", "port"],
            "properties": {
                "host": {"type": "string"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tls": {"type": "boolean"},
                "qos": {"enum": [0, 1, 2]},
                "keepAlive": {"type": "integer", "minimum": 0},
            },
        },
        "sensors": {
            "type": "array",
            "maxItems": 16,
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["bme280", "pir", "lux", "dht22"]},
                    "pin": _PIN,
                    "address": {"type": "integer", "minimum": 0, "maximum": 127},
                    "offsets": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
        "leds": {
            "type": "object",
            "properties": {"pin": _PIN, "brightness": {"type": "number", "minimum": 0}},
        },
        "buttons": {"type": "array", "items": {"type": "object", "properties": {"pin": _PIN}}},
        "ntpServers": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "watchdogSeconds": {"type": "integer", "minimum": 0},
        "hostname": {"type": "string", "pattern": "^[a-z0-9-]{1,63}$"},
    },
}


def bench_validators(report: Report, sizes: dict[str, int]) -> None:
    docs = [typical_config(i) for i in range(50)]
    draft_2020 = jsonschema.Draft202012Validator(SCHEMA)
    draft_07 = jsonschema.Draft7Validator(SCHEMA)
    compiled = fastjsonschema.compile(SCHEMA, use_default=False)
    assert all(draft_2020.is_valid(d) for d in docs)
    turn = {"i": 0}

    def doc() -> dict[str, Any]:
        turn["i"] = (turn["i"] + 1) % len(docs)
        return docs[turn["i"]]

    timings = measure(
        {
            "fastjsonschema draft-07": lambda: compiled(doc()),
            "jsonschema draft 2020-12": lambda: draft_2020.is_valid(doc()),
            "jsonschema draft-07": lambda: draft_07.is_valid(doc()),
        },
        repeat=sizes["validations"],
        warmup=20,
        max_seconds=30,
    )
    fast = timings["fastjsonschema draft-07"]
    report.add(fast.name, fast)
    for name in ("jsonschema draft 2020-12", "jsonschema draft-07"):
        report.add(name, timings[name], baseline=fast, note="validating one typical config")


def bench_writes(report: Report, scratch: Path, sizes: dict[str, int]) -> None:
    plain = open_store(str(scratch / "plain"), create=True)
    checked = open_store(str(scratch / "checked"), create=True)
    checked.schemas.put("default", SCHEMA)
    patched = open_store(str(scratch / "patched"), create=True)
    patched.schemas.put("default", SCHEMA)
    mac = MacAddress(0x02_00_00_00_00_01)
    contents = [typical_config(1, 0), typical_config(1, 1)]
    for store in (plain, checked, patched):
        store.put(mac, contents[0])
    turn = {"plain": 0, "checked": 0, "patch": 0}

    def put(store: ConfigStore, key: str) -> None:
        turn[key] ^= 1  # alternate contents so every put really writes
        store.put(mac, contents[turn[key]])

    def patch() -> None:
        turn["patch"] ^= 1
        patched.patch(mac, MergePatch({"pollIntervalSeconds": 60 + turn["patch"]}))

    timings = measure(
        {
            "put, no schema": lambda: put(plain, "plain"),
            "put, realistic schema": lambda: put(checked, "checked"),
            "patch, realistic schema": patch,
        },
        repeat=sizes["puts"],
        warmup=3,
        max_seconds=60,
    )
    base = timings["put, no schema"]
    report.add(base.name, base, note="local disk: write, fsync, rename")
    report.add("put, realistic schema", timings["put, realistic schema"], baseline=base, target=1.1)
    report.add(
        "patch, realistic schema",
        timings["patch, realistic schema"],
        baseline=base,
        note="a one-key merge patch: read, apply, check, conditional write",
    )


def bench_store_check(report: Report, scratch: Path, sizes: dict[str, int]) -> None:
    root = scratch / "fleet"
    populate(root, sizes["fleet"])
    store = open_store(str(root))
    store.schemas.put("default", SCHEMA)
    assert not store.schema_report().violations

    def read_all() -> None:
        for summary in store.listing().summaries:
            store.get(summary.mac_address)

    timings = measure(
        {"read every config": read_all, "schema_report": store.schema_report},
        repeat=sizes["fleet_rounds"],
        per_call=sizes["fleet"],
        warmup=1,
        max_seconds=120,
    )
    base = timings["read every config"]
    whole = timings["schema_report"].median * sizes["fleet"]
    report.add(f"{base.name} (per config)", base)
    report.add(
        "schema_report (per config)",
        timings["schema_report"],
        baseline=base,
        note=f"{sizes['fleet']} configs; the whole store took {whole:.2f} s",
    )


def main() -> None:
    parser = common_arguments(__doc__.splitlines()[0] if __doc__ else "schema benchmarks")
    args = parser.parse_args()
    sizes: dict[str, int] = dict(QUICK if args.quick else FULL)
    report = Report("schemas and patches", {"quick": args.quick, "fleet": sizes["fleet"]})
    scratch = Path(tempfile.mkdtemp(prefix="iot-config-bench-schemas-", dir=args.dir))
    started = time.perf_counter()
    try:
        bench_validators(report, sizes)
        bench_writes(report, scratch, sizes)
        bench_store_check(report, scratch, sizes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.parameters["seconds"] = round(time.perf_counter() - started, 1)
    report.print()
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
