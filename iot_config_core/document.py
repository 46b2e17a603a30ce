"""Strict JSON config documents: what may be stored, how it is written, and its ETag.

Devices parse these documents with small JSON libraries and little RAM, so the store accepts
only what every parser reads the same way: a UTF-8 JSON object, no duplicate keys, no
NaN/Infinity, bounded nesting and size. Stored bytes are pretty-printed (humans edit the files on
the share) and the ETag is a hash of those exact bytes, so a hand edit is a new version.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import attrs

from .errors import DocumentTooLargeError, InvalidDocumentError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DocumentLimits",
    "check_size",
    "compute_etag",
    "decode_document",
    "encode_document",
]

# The old service accepted any size and real configs of a few hundred KiB exist.
DEFAULT_MAX_BYTES = 1024 * 1024
# The old service accepted documents nested 40 deep, and they must keep working after a
# migration; this leaves headroom and stays far below the recursion limits of JSON parsers.
DEFAULT_MAX_DEPTH = 64

_BOM = b"\xef\xbb\xbf"


@attrs.frozen
class DocumentLimits:
    """Bounds on accepted documents; operators of small devices lower ``max_bytes``."""

    max_bytes: int = attrs.field(default=DEFAULT_MAX_BYTES, validator=attrs.validators.gt(0))
    max_depth: int = attrs.field(default=DEFAULT_MAX_DEPTH, validator=attrs.validators.gt(0))


def compute_etag(data: bytes) -> str:
    """The strong ETag of stored bytes: their MD5 in hex.

    MD5 is a change detector here, not a security boundary; it is chosen because it is what S3
    servers report as the ETag of a single-part object, so object stores give us our ETag in a
    listing without reading the object.
    """
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _invalid(reason: str, message: str, **details: Any) -> NoReturn:
    raise InvalidDocumentError(message, reason=reason, **details)


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _invalid("duplicate_key", f"duplicate key {key!r}", key=key)
            seen.add(key)
    return obj


def _reject_constant(name: str) -> NoReturn:
    _invalid("non_finite_number", f"{name} is not valid JSON", value=name)


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)

# Tuples, not ``dict | list`` unions: a union written inside the loop is rebuilt for every item,
# which made the walk cost several times the JSON decode itself.
_CONTAINERS = (dict, list)
_SCALARS = (str, int, float, type(None))


def _pointer_token(key: str | int) -> str:
    """One RFC 6901 JSON pointer step."""
    return "/" + str(key).replace("~", "~0").replace("/", "~1")


def _check_tree(root: dict[Any, Any], max_depth: int) -> None:
    """Check nesting depth, value types and finiteness without recursion.

    One walk serves both directions: bytes from disk (where ``1e400`` decodes to infinity) and
    content from callers (where a tuple, a set or an int key would not survive a round trip).
    Errors name the JSON pointer of the value (``details["pointer"]``).
    """
    stack: list[tuple[dict[Any, Any] | list[Any], int, str]] = [(root, 1, "")]
    while stack:
        value, depth, pointer = stack.pop()
        if depth > max_depth:
            _too_deep(max_depth, pointer=pointer)
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    where = pointer or "/"
                    message = f"object key {key!r} at {where} is not a string"
                    _invalid("invalid_key", message, pointer=pointer)
            items: Any = value.items()
        else:
            items = enumerate(value)
        for key, item in items:
            if isinstance(item, _CONTAINERS):
                stack.append((item, depth + 1, pointer + _pointer_token(key)))
            elif not isinstance(item, _SCALARS) or (
                isinstance(item, float) and not math.isfinite(item)
            ):
                _invalid_value(item, pointer + _pointer_token(key))


def _invalid_value(item: object, pointer: str) -> NoReturn:
    if isinstance(item, float):
        _invalid("non_finite_number", f"non-finite number at {pointer}", pointer=pointer)
    _invalid("invalid_type", f"value of type {type(item).__name__} at {pointer}", pointer=pointer)


def _too_deep(max_depth: int, pointer: str) -> NoReturn:
    message = f"nesting deeper than {max_depth} levels at {pointer}"
    _invalid("too_deep", message, limit=max_depth, pointer=pointer)


# Decodes the one string at an offset (``raw_decode``), with the escapes the decoder knows.
_STRING = json.JSONDecoder()
_NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})
# Any JSON scalar that is not a string: what follows a value position when it is not {, [ or ".
_SCALAR_TOKEN = re.compile(r"-?Infinity|NaN|true|false|null|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _locate(text: str, max_depth: int) -> InvalidDocumentError | None:
    """The first duplicate key, non-finite number or too-deep nesting of ``text``, with its place.

    The decoder's hooks see values, not offsets, so when one of them refuses a document this
    walks the text once more (iteratively, so depth is no problem) to say where: line, column and
    JSON pointer. Only called on documents already refused. ``None`` when nothing is found, also
    when the walk meets text that is not JSON (then the caller's own error stands).
    """
    try:
        return _walk(text, max_depth)
    except (ValueError, IndexError):
        return None


def _walk(text: str, max_depth: int) -> InvalidDocumentError | None:
    """`_locate` proper, on text that is valid JSON up to the problem it looks for."""
    # One frame per open container: its pointer, the keys seen (None for an array), the current
    # key or next index, and whether a key comes next.
    frames: list[list[Any]] = []
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        top = frames[-1] if frames else None
        if char in " \t\n\r:,}]":
            if char == "," and top is not None and top[1] is not None:
                top[3] = True  # a key comes next
            elif char in "}]":
                frames.pop()
            i += 1
            continue
        if top is not None and top[1] is not None and top[3]:  # a key
            if char != '"':
                return None
            key, after = _STRING.raw_decode(text, i)
            if not _encodable(key):  # the key cannot be in the pointer (nor in any UTF-8 answer)
                return _located("lone_surrogate", _SURROGATE, text, i, top[0])
            if key in top[1]:
                where = top[0] + _pointer_token(key)
                return _located("duplicate_key", f"duplicate key {key!r}", text, i, where, key=key)
            top[1].add(key)
            top[2], top[3] = key, False
            i = after
            continue
        where = ""
        if top is not None:
            where = top[0] + _pointer_token(top[2])
            if top[1] is None:
                top[2] += 1
        if char in "{[":
            if len(frames) >= max_depth:
                what = f"nesting deeper than {max_depth} levels"
                return _located("too_deep", what, text, i, where, limit=max_depth)
            frames.append([where, set() if char == "{" else None, 0, char == "{"])
            i += 1
            continue
        if char == '"':
            string, after = _STRING.raw_decode(text, i)
            if not _encodable(string):
                return _located("lone_surrogate", _SURROGATE, text, i, where)
            i = after
            continue
        match = _SCALAR_TOKEN.match(text, i)
        if match is None:
            return None
        problem = _scalar_problem(match.group())
        if problem is not None:
            return _located(*problem, text, i, where)
        i = match.end()
    return None


def _scalar_problem(token: str) -> tuple[str, str] | None:
    """``(reason, what)`` when a number token cannot be decoded to a finite JSON number."""
    digits = token.lstrip("-")
    if token in _NON_FINITE or (
        token[-1].isdigit() and not digits.isdigit() and math.isinf(float(token))
    ):
        return "non_finite_number", f"non-finite number {token}"
    if digits.isdigit() and 0 < sys.get_int_max_str_digits() < len(digits):
        return "invalid_number", f"integer of {len(digits)} digits is too long"
    return None


def _located(
    reason: str, what: str, text: str, index: int, pointer: str, **details: Any
) -> InvalidDocumentError:
    line, column = _line_col(text, index)
    return InvalidDocumentError(
        f"{what} at line {line}, column {column}",
        reason=reason,
        line=line,
        column=column,
        pointer=pointer,
        **details,
    )


_PLAIN_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_vouched(text: str, max_depth: int) -> dict[str, Any] | None:
    r"""Decode with the C scanner alone, or return ``None`` when that cannot vouch for ``text``.

    The duplicate-key hook makes the scanner build a list of pairs per object and doubles the
    decode, so valid documents are proven duplicate-free by counting instead. In valid JSON every
    ``:`` either separates a key from its value or sits inside a string, so the colons of the text
    equal the pairs plus the colons of the strings; a dropped duplicate would take its pair (and
    its strings) out of the decoded tree and break the equality. ``\u`` escapes could spell a
    colon or a key differently, so such texts are not vouched for. ``None`` sends the text down
    the strict path, which decides and names any error exactly as it always has.
    """
    if "\\u" in text or "\\U" in text:
        return None
    try:
        value = _PLAIN_DECODER.decode(text)
    except Exception:  # any error is the strict path's to report, with its precise reason
        return None
    if type(value) is not dict:
        return None
    pairs = 0
    strings: list[str] = []
    level: list[Any] = [value]
    depth = 1
    while level:  # breadth-first, one level per pass: the depth comes for free
        if depth > max_depth:
            return None
        below: list[Any] = []
        for node in level:
            items = node
            if type(node) is dict:
                pairs += len(node)
                strings.extend(node)
                items = node.values()
            for item in items:
                kind = type(item)
                if kind is str:
                    strings.append(item)
                elif kind is dict or kind is list:
                    below.append(item)
                elif kind is float and not math.isfinite(item):
                    return None
        level = below
        depth += 1
    colons = text.count(":")
    if colons != pairs and colons != pairs + "".join(strings).count(":"):
        return None
    return value


def check_size(size: int, limits: DocumentLimits) -> None:
    """Raise `DocumentTooLargeError` when ``size`` bytes exceed ``limits.max_bytes``."""
    if size > limits.max_bytes:
        raise DocumentTooLargeError(
            f"document of {size} bytes exceeds the limit of {limits.max_bytes} bytes",
            reason="too_large",
            size=size,
            limit=limits.max_bytes,
        )


def decode_document(data: bytes, limits: DocumentLimits = DocumentLimits()) -> dict[str, Any]:
    """Decode stored or uploaded bytes into a config object, or raise `InvalidDocumentError`."""
    check_size(len(data), limits)
    if data.startswith(_BOM):
        _invalid(
            "byte_order_mark", "document starts with a UTF-8 byte order mark", line=1, column=1
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8")
        line, column = _line_col(good, len(good))
        _invalid(
            "invalid_utf8",
            f"invalid UTF-8 at byte {exc.start} (line {line}, column {column})",
            byte=exc.start,
            line=line,
            column=column,
        )
    vouched = _decode_vouched(text, limits.max_depth)
    if vouched is not None:
        return vouched
    if not text.strip(" \t\n\r"):
        _invalid("empty", "document is empty")
    try:
        value = _DECODER.decode(text)
    except InvalidDocumentError as exc:  # a hook refused it: say where
        raise _locate(text, limits.max_depth) or exc from None
    except json.JSONDecodeError as exc:
        _invalid(
            "syntax",
            f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            line=exc.lineno,
            column=exc.colno,
        )
    except RecursionError:
        located = _locate(text, limits.max_depth)
        if located is None:
            _too_deep(limits.max_depth, pointer="")
        raise located from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise _locate(text, limits.max_depth) or InvalidDocumentError(
            f"invalid JSON number: {exc}", reason="invalid_number"
        ) from None
    if not isinstance(value, dict):
        kind = "array" if isinstance(value, list) else type(value).__name__
        _invalid(
            "not_an_object", f"document must be a JSON object, not {_JSON_KIND.get(kind, kind)}"
        )
    try:
        _check_tree(value, limits.max_depth)
    except InvalidDocumentError as exc:  # 1e400 or too deep: give the line and column as well
        raise _locate(text, limits.max_depth) or exc from None
    if "\\u" in text or "\\U" in text:
        # Lone surrogates (\ud800) decode but cannot be written back as UTF-8.
        try:
            _check_encodable(value)
        except InvalidDocumentError as exc:
            raise _locate(text, limits.max_depth) or exc from None
    return value


_JSON_KIND = {
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "null",
    "array": "an array",
}


def _check_encodable(value: dict[str, Any]) -> None:
    if not _encodable(json.dumps(value, ensure_ascii=False)):
        _invalid("lone_surrogate", _SURROGATE)


_SURROGATE = "string contains a lone UTF-16 surrogate escape"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_document(content: Mapping[str, Any], limits: DocumentLimits = DocumentLimits()) -> bytes:
    """The bytes to store for ``content``: pretty-printed UTF-8 JSON with a trailing newline.

    Raises `InvalidDocumentError` for content that would not decode back to itself, and
    `DocumentTooLargeError` when the encoded bytes exceed ``limits.max_bytes``.
    """
    if not isinstance(content, Mapping):
        _invalid("not_an_object", f"content must be a JSON object, not {type(content).__name__}")
    content = dict(content)
    _check_tree(content, limits.max_depth)
    try:
        data = (json.dumps(content, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    except UnicodeEncodeError:
        _invalid("lone_surrogate", "string contains a lone UTF-16 surrogate")
    except ValueError as exc:  # integers beyond Python's digit limit
        _invalid("invalid_number", f"cannot encode number: {exc}")
    check_size(len(data), limits)
    return data
