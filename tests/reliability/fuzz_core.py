"""Coverage-guided fuzzing of the core parsers with atheris (libFuzzer), one target per run.

Run as a script, not imported by pytest: ``python fuzz_core.py TARGET [libFuzzer flags]``, e.g.
``python fuzz_core.py document -runs=200000 -max_total_time=60``. A target fails (libFuzzer exits
non-zero and writes a crash file) when any exception other than the parser's own typed error
escapes, or when a round-trip property does not hold. `test_fuzz_core.py` drives it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

atheris: Any = importlib.import_module("atheris")  # no type stubs; an optional tool

with atheris.instrument_imports(include=["iot_config_core"]):
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

_LIMITS = (DocumentLimits(), DocumentLimits(max_bytes=512, max_depth=4))


def _text(data: bytes) -> str:
    """Bytes to text in two ways, so both arbitrary code points and raw UTF-8 get tried."""
    if not data:
        return ""
    if data[0] & 1:
        provider = atheris.FuzzedDataProvider(data[1:])
        return str(provider.ConsumeUnicode(len(data)))
    return data[1:].decode("utf-8", "surrogateescape")


def fuzz_mac(data: bytes) -> None:
    """Any text parses to a MAC whose canonical spelling parses back to it, or is refused."""
    text = _text(data)
    try:
        mac = MacAddress.parse(text)
    except InvalidMacError:
        return
    if MacAddress.parse(str(mac)) != mac:
        raise AssertionError(f"canonical spelling of {text!r} does not round-trip")
    if MacAddress.from_file_name(mac.file_name) != mac:
        raise AssertionError(f"file name of {text!r} does not round-trip")
    name = mac.file_name
    if "/" in name or "\\" in name or ".." in name or "\x00" in name or len(name) != 22:
        raise AssertionError(f"unsafe file name {name!r} from {text!r}")


def fuzz_document(data: bytes) -> None:
    """Any bytes decode to an object that encodes and decodes back to itself, or are refused."""
    limits = _LIMITS[data[0] & 1] if data else _LIMITS[0]
    try:
        value = decode_document(data[1:], limits)
    except InvalidDocumentError:
        return
    try:
        encoded = encode_document(value, limits)
    except InvalidDocumentError as exc:
        # Pretty-printing may push an accepted document over the byte limit; nothing else may fail.
        if exc.details.get("reason") != "too_large":
            raise AssertionError(f"decoded document does not re-encode: {exc!r}") from exc
        return
    if decode_document(encoded, limits) != value:
        raise AssertionError("decode(encode(value)) != value")


def fuzz_etag(data: bytes) -> None:
    """Any header text parses to a condition whose rendering parses to the same, or is refused."""
    text = _text(data)
    try:
        condition = ETagCondition.parse(text)
    except InvalidETagError:
        return
    if ETagCondition.parse(str(condition)) != condition:
        raise AssertionError(f"{text!r} does not round-trip through str()")
    for tag in condition.tags:
        condition.matches_strong(tag.opaque)
        condition.matches_weak(tag.opaque)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "mac": fuzz_mac,
    "document": fuzz_document,
    "etag": fuzz_etag,
}


def main() -> None:
    """Fuzz the target named in ``argv[1]``; the remaining arguments go to libFuzzer."""
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
