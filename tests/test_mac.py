"""MAC parsing: every spelling in, one canonical spelling out, and precise rejections."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_config_core import InvalidMacError, MacAddress
from iot_config_core.mac import SPELLINGS_PATTERN
from iot_config_core.testing import mac_addresses, spelled_macs


@given(spelled_macs())
def test_every_spelling_parses_to_the_same_mac(case: tuple[MacAddress, str]) -> None:
    mac, text = case
    parsed = MacAddress.parse(text)
    assert parsed == mac
    assert hash(parsed) == hash(mac)
    digits = f"{mac.value:012x}"
    assert str(parsed) == "-".join(digits[i : i + 2] for i in range(0, 12, 2))


@given(mac_addresses)
def test_canonical_form_is_a_fixed_point(mac: MacAddress) -> None:
    text = str(mac)
    assert len(text) == 17
    assert MacAddress.parse(text) == mac
    assert str(MacAddress.parse(text)) == text
    assert MacAddress.from_file_name(mac.file_name) == mac
    assert mac.file_name == f"{text}.json"
    assert MacAddress.parse(mac.with_separator(":", upper=True)) == mac
    with pytest.raises(InvalidMacError):  # dots group four digits, never two
        MacAddress.parse(mac.with_separator("."))
    assert repr(mac) == f"MacAddress('{text}')"


def test_known_spellings() -> None:
    expected = MacAddress(0xAABBCCDDEEFF)
    for text in [
        "AA:BB:CC:DD:EE:FF",
        "aa-bb-cc-dd-ee-ff",
        "aabbccddeeff",
        "AABB.CCDD.EEFF",
        "  aA:Bb:cC:Dd:eE:fF\t\n",
    ]:
        assert MacAddress.parse(text) == expected
    assert str(expected) == "aa-bb-cc-dd-ee-ff"
    assert expected.with_separator() == "aa:bb:cc:dd:ee:ff"
    assert expected.with_separator(":", upper=True) == "AA:BB:CC:DD:EE:FF"


@given(st.text(max_size=80))
def test_arbitrary_text_raises_only_invalid_mac(text: str) -> None:
    error: InvalidMacError | None = None
    try:
        mac = MacAddress.parse(text)
    except InvalidMacError as exc:
        error = exc
    if error is None:
        assert MacAddress.parse(str(mac)) == mac
    else:
        assert error.code == "INVALID_MAC"
        assert error.message.startswith("invalid MAC address")


@given(st.text(alphabet="0123456789abcdefABCDEF:-. \u0663g", max_size=20))
def test_mac_like_text_raises_only_invalid_mac(text: str) -> None:
    try:
        mac = MacAddress.parse(text)
    except InvalidMacError:
        return
    assert 0 <= mac.value < 1 << 48


def _problem(text: str) -> str:
    with pytest.raises(InvalidMacError) as info:
        MacAddress.parse(text)
    problem = str(info.value.details["problem"])
    assert problem in info.value.message
    return problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("   \t", "empty"),
        ("a" * 65, "too long (65 characters)"),
        ("aabbccddeef", "wrong length: 11 hex digits, expected 12"),
        ("aabbccddeeff00", "wrong length: 14 hex digits, expected 12"),
        ("aa:bb:cc:dd:ee", "wrong length: groups must look like xx:xx:xx:xx:xx:xx"),
        ("aa:bb:cc:dd:ee:f", "wrong length: groups must look like xx:xx:xx:xx:xx:xx"),
        ("a:abb:cc:dd:ee:ff", "wrong length: groups must look like xx:xx:xx:xx:xx:xx"),
        ("aa-bb-cc-dd-ee-ff-00", "wrong length: groups must look like xx-xx-xx-xx-xx-xx"),
        ("aab.bccdd.eeff", "wrong length: groups must look like xxxx.xxxx.xxxx"),
        ("aa:bb:cc:dd:ee:ff:", "wrong length: groups must look like xx:xx:xx:xx:xx:xx"),
        ("aa:bb-cc:dd:ee:ff", "mixed separators '-:'"),
        ("aabb.ccdd-eeff", "mixed separators '-.'"),
        ("gg:bb:cc:dd:ee:ff", "non-hex characters 'g'"),
        ("aa bb cc dd ee ff", "non-hex characters ' '"),
        ("0x:bb:cc:dd:ee:zz", "non-hex characters 'xz'"),
        ("aa:bb:cc:dd:ee:f\u0663", "non-ASCII character '\u0663'"),
        ("\uff21\uff21:bb:cc:dd:ee:ff", "non-ASCII character '\uff21'"),
    ],
)
def test_rejection_says_what_was_wrong(text: str, expected: str) -> None:
    assert _problem(text) == expected


def test_non_ascii_digits_are_not_hex() -> None:
    # Python's int() accepts any Unicode decimal digit: the parser must not rely on it.
    assert int("\u0663", 16) == 3
    assert _problem("aabbccddee\u0663\u0663").startswith("non-ASCII character")


def test_long_input_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidMacError) as info:
        MacAddress.parse("z" * 1000)
    assert len(info.value.message) < 200
    assert info.value.details["value"].endswith("…")


def test_non_string_is_rejected() -> None:
    with pytest.raises(InvalidMacError, match="must be a string, not int"):
        MacAddress.parse(cast("Any", 0xAABBCCDDEEFF))


@pytest.mark.parametrize("value", [-1, 1 << 48])
def test_value_out_of_range(value: int) -> None:
    with pytest.raises(InvalidMacError, match="out of range"):
        MacAddress(value)


def test_value_must_be_int() -> None:
    with pytest.raises(TypeError):
        MacAddress(cast("Any", "aa"))


@pytest.mark.parametrize(
    "name",
    [
        "AA-BB-CC-DD-EE-FF.json",
        "aa:bb:cc:dd:ee:ff.json",
        "aabbccddeeff.json",
        "aa-bb-cc-dd-ee-ff.JSON",
        "aa-bb-cc-dd-ee-ff.json.tmp",
        ".aa-bb-cc-dd-ee-ff.json",
        "aa-bb-cc-dd-ee-fg.json",
        "aa-bb-cc-dd-ee-f\u0663.json",
        "",
    ],
)
def test_only_canonical_file_names_name_a_config(name: str) -> None:
    assert MacAddress.from_file_name(name) is None


@given(st.lists(mac_addresses, min_size=2, max_size=8))
def test_order_and_hash_follow_the_numeric_value(macs: list[MacAddress]) -> None:
    assert [m.value for m in sorted(macs)] == sorted(m.value for m in macs)
    assert sorted(macs, key=str) == sorted(macs)  # canonical text sorts like the number
    assert len(set(macs)) == len({m.value for m in macs})


def test_equal_spellings_collapse_in_sets_and_dicts() -> None:
    spellings = ["AA:BB:CC:DD:EE:FF", "aabbccddeeff", "aabb.ccdd.eeff"]
    assert len({MacAddress.parse(s) for s in spellings}) == 1
    assert MacAddress.parse("00:00:00:00:00:01") < MacAddress.parse("00:00:00:00:01:00")


@given(
    st.integers(min_value=0, max_value=(1 << 48) - 1),
    st.sampled_from(["colon", "hyphen", "bare", "dotted"]),
    st.booleans(),
)
def test_the_documented_pattern_matches_every_spelling(value: int, style: str, upper: bool) -> None:
    digits = f"{value:012x}"
    spelled = {
        "colon": ":".join(digits[i : i + 2] for i in range(0, 12, 2)),
        "hyphen": "-".join(digits[i : i + 2] for i in range(0, 12, 2)),
        "bare": digits,
        "dotted": ".".join(digits[i : i + 4] for i in range(0, 12, 4)),
    }[style]
    spelled = spelled.upper() if upper else spelled
    assert re.fullmatch(SPELLINGS_PATTERN, spelled)
    assert MacAddress.parse(spelled).value == value


@given(st.text(alphabet="0123456789abcdefABCDEFgG:-. ٣", max_size=20))
def test_the_documented_pattern_is_exactly_what_parses(text: str) -> None:
    try:
        MacAddress.parse(text)
    except InvalidMacError:
        parses = False
    else:
        parses = True
    assert parses == bool(re.fullmatch(SPELLINGS_PATTERN, text.strip()))


@pytest.mark.parametrize(
    ("name", "problem"),
    [("aa-bb-cc-dd-ee-ff.txt", "not a .json file"), ("notes.json", None)],
)
def test_legacy_file_names_say_what_is_wrong(name: str, problem: str | None) -> None:
    with pytest.raises(InvalidMacError) as info:
        MacAddress.from_legacy_file_name(name)
    assert info.value.details["value"] == name
    if problem is not None:
        assert info.value.details["problem"] == problem
    else:
        assert "file name is not <mac>.json" in info.value.message


@pytest.mark.parametrize(
    "name", ["AA:BB:CC:DD:EE:FF.json", "aabbccddeeff.JSON", "aabb.ccdd.eeff.json"]
)
def test_legacy_file_names_in_any_spelling(name: str) -> None:
    assert str(MacAddress.from_legacy_file_name(name)) == "aa-bb-cc-dd-ee-ff"
