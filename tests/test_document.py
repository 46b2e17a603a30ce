"""Strict JSON documents: what round-trips, what is refused and why, and the ETag of the bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_config_core import (
    DocumentLimits,
    DocumentTooLargeError,
    InvalidDocumentError,
    compute_etag,
    decode_document,
    encode_document,
)
from iot_config_core import document as document_module
from iot_config_core.document import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH
from iot_config_core.testing import json_objects, nest_depth


def _typed(value: Any) -> Any:
    """``value`` with bools told apart from ints, so True == 1 cannot hide a type change."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


@given(json_objects)
def test_any_json_object_round_trips(content: dict[str, Any]) -> None:
    data = encode_document(content)
    decoded = decode_document(data)
    assert _typed(decoded) == _typed(content)
    assert list(decoded) == list(content)  # key order is kept
    assert encode_document(decoded) == data  # encoding is a fixed point
    assert data.endswith(b"\n")
    assert compute_etag(data) == hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_stored_bytes_are_pretty_printed_utf8() -> None:
    data = encode_document({"deviceName": "Küche", "n": [1, 2], "o": {}})
    assert data == (
        b'{\n  "deviceName": "K\xc3\xbcche",\n  "n": [\n    1,\n    2\n  ],\n  "o": {}\n}\n'
    )
    assert encode_document({}) == b"{}\n"


def test_encode_accepts_any_mapping() -> None:
    proxy: Mapping[str, Any] = MappingProxyType({"a": 1})
    assert encode_document(proxy) == encode_document({"a": 1})


def test_etag_is_a_hash_of_the_stored_bytes() -> None:
    content = {"enableOTA": True}
    data = encode_document(content)
    hand_edited = data.replace(b"  ", b"    ")  # same content, different bytes
    assert decode_document(hand_edited) == content
    assert compute_etag(hand_edited) != compute_etag(data)
    assert compute_etag(data) == compute_etag(encode_document(dict(content)))
    assert len(compute_etag(data)) == 32


def _reject(data: bytes, limits: DocumentLimits | None = None) -> InvalidDocumentError:
    with pytest.raises(InvalidDocumentError) as info:
        decode_document(data, limits or DocumentLimits())
    assert info.value.code in {"INVALID_DOCUMENT", "DOCUMENT_TOO_LARGE"}
    return info.value


def test_invalid_utf8_says_where() -> None:
    error = _reject(b'{\n  "a": "\xc3\xa9\xff"}')
    assert error.details == {"reason": "invalid_utf8", "byte": 12, "line": 2, "column": 10}
    assert "line 2, column 10" in error.message


def test_syntax_error_says_line_and_column() -> None:
    error = _reject(b'{\n  "a": 1,\n}')
    assert error.details == {"reason": "syntax", "line": 3, "column": 1}
    assert "line 3, column 1" in error.message
    assert _reject(b'{"a": 1} trailing').details == {"reason": "syntax", "line": 1, "column": 10}
    assert _reject(b"{'a': 1}").details["reason"] == "syntax"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"[1, 2]", "an array"),
        (b'"text"', "a string"),
        (b"42", "a number"),
        (b"4.5", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_top_level_must_be_an_object(data: bytes, kind: str) -> None:
    error = _reject(data)
    assert error.details["reason"] == "not_an_object"
    assert error.message.endswith(f"not {kind}")


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e400}',
        b'{"a": [-1e400]}',
        b'{"a": {"b": [1, 2, 1E999]}}',
    ],
)
def test_non_finite_numbers_are_refused(data: bytes) -> None:
    error = _reject(data)
    assert error.details["reason"] == "non_finite_number"
    assert f"line 1, column {error.details['column']}" in error.message


def test_duplicate_keys_are_refused_at_any_depth() -> None:
    error = _reject(b'{"a": 1, "b": 2, "a": 3}')
    assert error.details == {
        "reason": "duplicate_key",
        "key": "a",
        "line": 1,
        "column": 18,
        "pointer": "/a",
    }
    assert "'a' at line 1, column 18" in error.message
    nested = _reject(b'{"x": [{"k": 1,\n  "k": 1}]}')
    assert (nested.details["key"], nested.details["pointer"]) == ("k", "/x/0/k")
    assert (nested.details["line"], nested.details["column"]) == (2, 3)


@pytest.mark.parametrize(
    ("data", "reason", "line", "column", "pointer"),
    [
        (b'{"a": NaN}', "non_finite_number", 1, 7, "/a"),
        (
            b'{\n  "wifi": {\n    "x": [1, -Infinity]\n  }\n}',
            "non_finite_number",
            3,
            14,
            "/wifi/x/1",
        ),
        (b'{"a": {"b": 1e400}}', "non_finite_number", 1, 13, "/a/b"),
        (b'{"a/b": {"~": -1E999}}', "non_finite_number", 1, 15, "/a~1b/~0"),
        (b'{"a": 1, "a": 1e400}', "duplicate_key", 1, 10, "/a"),
        (b'{"s": "\\ud800"}', "lone_surrogate", 1, 7, "/s"),
        (b'{"n": [' + b"1" * 5000 + b"]}", "invalid_number", 1, 8, "/n/0"),
        (b'{"d": ' + b"[" * 70 + b"]" * 70 + b"}", "too_deep", 1, 70, "/d" + "/0" * 63),
    ],
)
def test_every_decode_error_says_where(
    data: bytes, reason: str, line: int, column: int, pointer: str
) -> None:
    error = _reject(data)
    assert error.details["reason"] == reason
    assert (error.details["line"], error.details["column"]) == (line, column)
    assert error.details["pointer"] == pointer
    assert f"at line {line}, column {column}" in error.message


@pytest.mark.parametrize("data", [b"", b" ", b"\n\n", b" \t\r\n"])
def test_empty_document_says_so(data: bytes) -> None:
    error = _reject(data)
    assert error.details == {"reason": "empty"}
    assert error.message == "document is empty"


def test_documents_nested_like_the_old_service_accepted_are_kept() -> None:
    assert DEFAULT_MAX_DEPTH == 64
    old = nest_depth(40)
    assert decode_document(encode_document(old)) == old


def test_nesting_depth_is_bounded() -> None:
    at_limit = json.dumps(nest_depth(DEFAULT_MAX_DEPTH)).encode()
    assert decode_document(at_limit) == nest_depth(DEFAULT_MAX_DEPTH)
    too_deep = json.dumps(nest_depth(DEFAULT_MAX_DEPTH + 1)).encode()
    assert _reject(too_deep).details["limit"] == DEFAULT_MAX_DEPTH
    arrays = b'{"a": ' + b"[" * DEFAULT_MAX_DEPTH + b"]" * DEFAULT_MAX_DEPTH + b"}"
    assert _reject(arrays).details["reason"] == "too_deep"
    custom = DocumentLimits(max_depth=2)
    assert decode_document(b'{"a": {}}', custom) == {"a": {}}
    error = _reject(b'{"a": {"b": {}}}', custom)
    assert error.details == {
        "reason": "too_deep",
        "limit": 2,
        "line": 1,
        "column": 13,
        "pointer": "/a/b",
    }


def test_nesting_beyond_the_interpreter_stack_is_refused_cleanly() -> None:
    error = _reject(b'{"a": ' + b"[" * 100_000)
    assert error.details["reason"] == "too_deep"


def test_size_limit() -> None:
    limits = DocumentLimits(max_bytes=16)
    assert decode_document(b'{"a": "1234567"}', limits) == {"a": "1234567"}  # exactly 16 bytes
    with pytest.raises(DocumentTooLargeError) as info:
        decode_document(b'{"a": "12345678"}', limits)
    assert info.value.code == "DOCUMENT_TOO_LARGE"
    assert info.value.details == {"reason": "too_large", "size": 17, "limit": 16}
    assert isinstance(info.value, InvalidDocumentError)
    with pytest.raises(DocumentTooLargeError) as info:
        encode_document({"a": "x" * 20}, limits)
    assert info.value.details["limit"] == 16
    assert DocumentLimits().max_bytes == DEFAULT_MAX_BYTES


@pytest.mark.parametrize("field", ["max_bytes", "max_depth"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DocumentLimits(**{field: 0})


def test_byte_order_mark_is_refused() -> None:
    error = _reject(b'\xef\xbb\xbf{"a": 1}')
    assert error.details == {"reason": "byte_order_mark", "line": 1, "column": 1}


def test_lone_surrogate_escape_is_refused() -> None:
    assert _reject(b'{"a": "\\ud800"}').details["reason"] == "lone_surrogate"
    assert _reject(b'{"\\udfff": 1}').details["reason"] == "lone_surrogate"
    assert decode_document(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    assert decode_document(b'{"a": "\\u00e9"}') == {"a": "\u00e9"}


def test_integer_beyond_the_digit_limit_is_refused() -> None:
    assert _reject(b'{"a": ' + b"1" * 5000 + b"}").details["reason"] == "invalid_number"


def _refuse(content: Any) -> InvalidDocumentError:
    with pytest.raises(InvalidDocumentError) as info:
        encode_document(content)
    return info.value


@pytest.mark.parametrize(
    ("content", "reason", "message"),
    [
        ({1: "a"}, "invalid_key", "object key 1 at / is not a string"),
        ({"a": {None: 1}}, "invalid_key", "object key None at /a is not a string"),
        ({"a": (1, 2)}, "invalid_type", "value of type tuple at /a"),
        ({"a": [b"x"]}, "invalid_type", "value of type bytes at /a/0"),
        ({"a": {1, 2}}, "invalid_type", "value of type set at /a"),
        ({"a": float("nan")}, "non_finite_number", "non-finite number at /a"),
        ({"a": [float("-inf")]}, "non_finite_number", "non-finite number at /a/0"),
        ({"a": "\ud800"}, "lone_surrogate", "lone UTF-16 surrogate"),
        ({"a": 10**5000}, "invalid_number", "cannot encode number"),
        ([1, 2], "not_an_object", "content must be a JSON object, not list"),
        ("{}", "not_an_object", "not str"),
        (nest_depth(DEFAULT_MAX_DEPTH + 1), "too_deep", "nesting deeper than 64 levels at /d/d"),
    ],
)
def test_encode_refuses_what_would_not_round_trip(content: Any, reason: str, message: str) -> None:
    error = _refuse(content)
    assert error.details["reason"] == reason
    assert message in error.message


def test_encode_then_decode_keeps_value_types() -> None:
    content = cast("dict[str, Any]", {"t": True, "f": False, "i": 1, "x": 1.0, "n": None})
    assert _typed(decode_document(encode_document(content))) == _typed(content)


# -- the fast path must never accept what the strict decoder refuses ---------------------------

_keys = st.sampled_from(["a", "b", "a:b", ":", "x", "é", 'ke\\"y'])
_scalars = st.one_of(
    st.sampled_from(["1", "-0.5", "1e400", "true", "null", '"v"', '":"', '"[{"', "NaN"]),
    st.integers().map(str),
)


def _texts(depth: int = 4) -> st.SearchStrategy[str]:
    """JSON-ish object texts whose keys may repeat, at any depth, with colons in strings."""
    if depth == 0:
        return _scalars
    inner = _texts(depth - 1)
    pairs = st.lists(st.tuples(_keys, st.one_of(_scalars, inner)), max_size=4)
    objects = pairs.map(lambda ps: "{" + ",".join(f'"{k}":{v}' for k, v in ps) + "}")
    arrays = st.lists(st.one_of(_scalars, inner), max_size=3).map(lambda vs: f"[{','.join(vs)}]")
    return st.one_of(objects, arrays) if depth < 4 else objects


@given(_texts(), st.integers(min_value=1, max_value=6))
def test_fast_path_agrees_with_the_strict_decoder(text: str, max_depth: int) -> None:
    """Whatever the C-only path vouches for, the strict path accepts with the same value."""
    vouched = document_module._decode_vouched(text, max_depth)
    try:
        strict = document_module._DECODER.decode(text)
        document_module._check_tree(strict, max_depth)
    except (InvalidDocumentError, ValueError):
        assert vouched is None
    else:
        if vouched is not None:
            assert _typed(vouched) == _typed(strict)
    if vouched is None:  # and the public function decides exactly as the strict path does
        with contextlib.suppress(InvalidDocumentError):
            decode_document(text.encode(), DocumentLimits(max_depth=max_depth))
