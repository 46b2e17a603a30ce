"""Fuzzing the core parsers: only their typed errors may escape, and what they accept round-trips.

Two engines: atheris (coverage-guided libFuzzer over the instrumented core, in a child process, when
it is installed) and Hypothesis (always; many examples from grammar-aware strategies). The number
of inputs each ran is recorded as a figure.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import PYTHON, child_env

from iot_config_core import (
    DocumentLimits,
    ETagCondition,
    InvalidDocumentError,
    InvalidETagError,
    InvalidMacError,
    MacAddress,
    decode_document,
    encode_document,
)

from .conftest import Figure
from .support import scaled

FUZZER = Path(__file__).with_name("fuzz_core.py")

# Seeds give libFuzzer the shapes worth mutating (first byte selects the mode in fuzz_core.py).
SEEDS: dict[str, list[bytes]] = {
    "mac": [
        b"\x00aa:bb:cc:dd:ee:ff",
        b"\x00AA-BB-CC-DD-EE-FF",
        b"\x00aabb.ccdd.eeff",
        b"\x00aabbccddeeff",
        b"\x00 aa-bb-cc-dd-ee-ff\n",
        b"\x00aa-bb-cc-dd-ee-f\xd9\xa3",
        b"\x01abcdefghijkl",
    ],
    "document": [
        b'\x00{"deviceName": "kitchen", "enableOTA": false, "n": [1, 2.5, null, {"a": "\\u00e9"}]}',
        b'\x01{"a": {"b": {"c": {"d": {"e": 1}}}}}',
        b'\x00{"a": 1, "a": 2}',
        b'\x00{"x": NaN, "y": -Infinity, "z": 1e400}',
        b'\x00{"s": "\\ud800"}',
        b"\x00[1, 2]",
        b"\x00\xef\xbb\xbf{}",
        b'\x00{"k": "\xff"}',
    ],
    "etag": [
        b'\x00"abc"',
        b'\x00W/"abc", "def"',
        b"\x00*",
        b"\x00abc, def",
        b'\x00"a\x80b"',
        b"\x01abc",
    ],
}
JSON_DICTIONARY = [
    '"{"', '"}"', '"["', '"]"', '":"', '","', '"\\""', '"true"', '"false"', '"null"',
    '"NaN"', '"Infinity"', '"-"', '"1e400"', '"\\\\u"', '"\\\\ud800"', '"0."', '"E+"',
]  # fmt: skip

_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
@pytest.mark.parametrize("target", ["mac", "document", "etag"])
def test_atheris_fuzz(target: str, tmp_path: Path, figure: Figure) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for i, seed in enumerate(SEEDS[target]):
        (seeds / f"seed{i}").write_bytes(seed)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    dictionary = tmp_path / "json.dict"
    dictionary.write_text("\n".join(JSON_DICTIONARY) + "\n")
    seconds = int(scaled(1, 60))
    args = [
        PYTHON,
        str(FUZZER),
        target,
        f"-max_total_time={seconds}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-max_len=8192",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
        str(seeds),
    ]
    if target == "document":
        args.insert(3, f"-dict={dictionary}")
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=seconds + 60, env=child_env(), check=False
    )
    tail = done.stderr[-3000:]
    assert done.returncode == 0, f"fuzzer found a failure (crash file in {tmp_path}):\n{tail}"
    runs = _DONE.search(done.stderr)
    assert runs is not None, tail
    coverage = re.findall(r"cov: (\d+)", done.stderr)
    figure("atheris inputs", int(runs.group(1)))
    figure("atheris seconds", int(runs.group(2)))
    figure("atheris edges covered", int(coverage[-1]) if coverage else 0)


# -- Hypothesis: grammar-aware inputs the byte mutator rarely builds ------------------------------


class Tally:
    """How many inputs a Hypothesis test tried: one instance serves all of its examples."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def inputs(figure: Figure) -> Iterator[Tally]:
    """A tally each example bumps; recorded as the test's figure when the test ends."""
    tally = Tally()
    yield tally
    figure("hypothesis inputs", tally.count)


_SETTINGS = settings(
    max_examples=int(scaled(600, 20_000)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)

mac_like = st.one_of(
    st.text(),
    st.text(alphabet="0123456789abcdefABCDEF:-. \t\n\u0663\uff10", max_size=24),
    st.builds(
        lambda parts, sep: sep.join(parts),
        st.lists(st.text(alphabet="0123456789abcdefG", min_size=1, max_size=5), max_size=7),
        st.sampled_from([":", "-", ".", "", "/", "%2F", "..", "\x00"]),
    ),
)


@_SETTINGS
@given(mac_like)
def test_mac_parse_fuzz(inputs: Tally, text: str) -> None:
    inputs.count += 1
    try:
        mac = MacAddress.parse(text)
    except InvalidMacError:
        return
    assert MacAddress.parse(str(mac)) == mac
    assert re.fullmatch(r"[0-9a-f]{2}(-[0-9a-f]{2}){5}\.json", mac.file_name)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def _mutations(value: dict[str, Any]) -> st.SearchStrategy[bytes]:
    text = json.dumps(value, ensure_ascii=bool(len(value) % 2))
    raw = text.encode("utf-8", "surrogatepass")
    return st.one_of(
        st.just(raw),
        st.builds(
            lambda i, junk: raw[:i] + junk + raw[i:],
            st.integers(0, len(raw)),
            st.sampled_from(
                [b"\xff", b"\xc3", b"NaN", b"Infinity", b'"a":1,"a":2,', b"[" * 40, b"\\ud800"]
            ),
        ),
        st.builds(lambda i: raw[:i], st.integers(0, len(raw))),
    )


@settings(_SETTINGS, max_examples=int(scaled(200, 10_000)))
@given(
    st.one_of(
        st.binary(max_size=256),
        st.dictionaries(st.text(max_size=8), json_values, max_size=6).flatmap(_mutations),
        st.integers(1, 5000).map(lambda n: b'{"a":' + b"[" * n + b"]" * n + b"}"),
    ),
    st.sampled_from([DocumentLimits(), DocumentLimits(max_bytes=300, max_depth=3)]),
)
def test_decode_document_fuzz(inputs: Tally, data: bytes, limits: DocumentLimits) -> None:
    inputs.count += 1
    try:
        value = decode_document(data, limits)
    except InvalidDocumentError:
        return
    try:
        encoded = encode_document(value, limits)
    except InvalidDocumentError as exc:
        # Pretty-printing may push an accepted document over the byte limit; nothing else may fail.
        if exc.details["reason"] != "too_large":
            raise
        return
    assert decode_document(encoded, limits) == value


@_SETTINGS
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(
            st.tuples(st.booleans(), st.text(alphabet='abc"\\W/ ,*\x80\x7f', max_size=8)),
            max_size=5,
        ).map(lambda tags: ", ".join(f'{"W/" if w else ""}"{t}"' for w, t in tags)),
    )
)
def test_etag_parse_fuzz(inputs: Tally, text: str) -> None:
    inputs.count += 1
    try:
        condition = ETagCondition.parse(text)
    except InvalidETagError:
        return
    assert ETagCondition.parse(str(condition)) == condition
