"""If-Match / If-None-Match values (RFC 9110): lists, weak tags, ``*`` and malformed input."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_config_core import EntityTag, ETagCondition, InvalidETagError

# RFC 9110 etagc: %x21 / %x23-7E / obs-text (%x80-FF).
_ETAGC = st.characters(codec="latin-1", exclude_characters='"', min_codepoint=0x21).filter(
    lambda c: not 0x7F <= ord(c) < 0x80
)
entity_tags = st.builds(EntityTag, st.text(_ETAGC, max_size=12), st.booleans())


def test_star() -> None:
    for text in ["*", "  *  "]:
        condition = ETagCondition.parse(text)
        assert condition.any
        assert condition.tags == ()
        assert str(condition) == "*"
    star = ETagCondition(any=True)
    assert star.matches_strong("abc")
    assert star.matches_weak("abc")
    assert not star.matches_strong(None)
    assert not star.matches_weak(None)


def test_single_tags() -> None:
    assert ETagCondition.parse('"abc"').tags == (EntityTag("abc"),)
    assert ETagCondition.parse('W/"abc"').tags == (EntityTag("abc", weak=True),)
    assert ETagCondition.parse('""').tags == (EntityTag(""),)
    # A bare ETag, as `StoredConfig.etag` hands it out or a client that strips quotes sends it.
    assert ETagCondition.parse("0123abcd").tags == (EntityTag("0123abcd"),)


def test_lists_with_optional_whitespace() -> None:
    condition = ETagCondition.parse(' "a" ,W/"b",  "c",bare ')
    assert condition.tags == (
        EntityTag("a"),
        EntityTag("b", weak=True),
        EntityTag("c"),
        EntityTag("bare"),
    )
    assert str(condition) == '"a", W/"b", "c", "bare"'


def test_strong_comparison_for_if_match() -> None:
    condition = ETagCondition.parse('W/"weak", "strong"')
    assert condition.matches_strong("strong")
    assert not condition.matches_strong("weak")
    assert not condition.matches_strong("other")
    assert not condition.matches_strong(None)


def test_weak_comparison_for_if_none_match() -> None:
    condition = ETagCondition.parse('W/"weak", "strong"')
    assert condition.matches_weak("weak")
    assert condition.matches_weak("strong")
    assert not condition.matches_weak("other")
    assert not condition.matches_weak(None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        '"unterminated',
        'a"b',
        '"a" "b"',
        '"a",,"b"',
        ",",
        'W/"x',
        'w/"x"',
        '"with space"',
        '"tab\there"',
        "**",
        '*, "a"',
        '"\x7f"',
    ],
)
def test_malformed_values_are_refused(text: str) -> None:
    with pytest.raises(InvalidETagError) as info:
        ETagCondition.parse(text)
    assert info.value.code == "INVALID_ETAG"


def test_overlong_header_is_refused_without_parsing() -> None:
    with pytest.raises(InvalidETagError, match="too long"):
        ETagCondition.parse(", ".join(['"abcdef"'] * 2000))


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidETagError, match="must be a string"):
        ETagCondition.parse(cast("Any", 42))


def test_parsed_condition_passes_through() -> None:
    condition = ETagCondition.parse('"a"')
    assert ETagCondition.parse(condition) is condition


@given(st.lists(entity_tags, min_size=1, max_size=5))
def test_formatted_lists_parse_back(tags: list[EntityTag]) -> None:
    condition = ETagCondition(tags=tuple(tags))
    assert ETagCondition.parse(str(condition)) == condition


@given(st.text(max_size=40))
def test_arbitrary_text_raises_only_invalid_etag(text: str) -> None:
    try:
        condition = ETagCondition.parse(text)
    except InvalidETagError:
        return
    assert condition.any or condition.tags
