"""Hypothesis strategies and sample values shared by the contract and the unit tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from iot_config_core.document import compute_etag, encode_document
from iot_config_core.mac import MacAddress

__all__ = [
    "JSON_SCALARS",
    "MAC_A",
    "MAC_B",
    "MAC_C",
    "etag_of",
    "json_objects",
    "json_values",
    "mac_addresses",
    "mac_spellings",
    "nest_depth",
    "small_contents",
    "spelled_macs",
]

mac_addresses = st.integers(min_value=0, max_value=(1 << 48) - 1).map(MacAddress)
_WHITESPACE = st.text(alphabet=" \t\r\n\x0b\x0c\u00a0\u3000", max_size=3)


@st.composite
def mac_spellings(draw: st.DrawFn, mac: MacAddress) -> str:
    """Any accepted spelling of ``mac``: colons, hyphens, dots or bare, any case, padded."""
    digits = f"{mac.value:012x}"
    upper = draw(st.integers(min_value=0, max_value=(1 << 12) - 1))
    digits = "".join(c.upper() if upper >> i & 1 else c for i, c in enumerate(digits))
    separator = draw(st.sampled_from([":", "-", ".", ""]))
    width = 4 if separator == "." else 2
    text = separator.join(digits[i : i + width] for i in range(0, 12, width))
    return draw(_WHITESPACE) + text + draw(_WHITESPACE)


def spelled_macs() -> st.SearchStrategy[tuple[MacAddress, str]]:
    """A random MAC together with one random spelling of it."""
    return mac_addresses.flatmap(lambda mac: mac_spellings(mac).map(lambda text: (mac, text)))


JSON_SCALARS: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=16,
)
json_objects: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(), json_values, max_size=6
)

# Small contents for the stateful test: few distinct values, so equal documents happen often.
small_contents = st.dictionaries(
    st.sampled_from(["deviceName", "enableOTA", "deviceEntityId", "n"]),
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["a", "kitchen", "é"]),
    max_size=3,
)

MAC_A = MacAddress.parse("aa-bb-cc-dd-ee-01")
MAC_B = MacAddress.parse("02-00-00-00-00-02")
MAC_C = MacAddress.parse("00-11-22-33-44-55")


def etag_of(content: Mapping[str, Any]) -> str:
    """The ETag the store gives ``content``."""
    return compute_etag(encode_document(content))


def nest_depth(depth: int) -> dict[str, Any]:
    """An object nested ``depth`` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"d": value}
    return value
