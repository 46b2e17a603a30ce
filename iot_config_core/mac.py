"""MAC addresses: every common spelling in, one canonical spelling out.

The canonical form, lowercase and hyphenated (``aa-bb-cc-dd-ee-ff``), is also the stem of the file
that stores a device's config, so parsing is the only gate between user input and a path: nothing
that is not twelve ASCII hex digits ever reaches the filesystem.
"""

from __future__ import annotations

import functools
import re

import attrs

from .errors import InvalidMacError

__all__ = ["CANONICAL_PATTERN", "SPELLINGS_PATTERN", "MacAddress"]

# Longer input cannot be a MAC; refusing it early keeps error messages short and work bounded.
_MAX_INPUT = 64
_HEX = frozenset("0123456789abcdefABCDEF")
_SEPARATORS = frozenset(":-.")
# (separator, group count, digits per group) for each accepted grouped spelling.
_LAYOUTS = {":": (6, 2), "-": (6, 2), ".": (3, 4)}
#: Every spelling `MacAddress.parse` accepts, as one regular expression (without the surrounding
#: whitespace it also strips), for API schemas and form validation. Tests keep the two in step.
SPELLINGS_PATTERN = (
    r"^(?:[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}"
    r"|[0-9A-Fa-f]{12}|[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){2})$"
)
#: The one spelling `MacAddress` writes (``str()``, file names, API answers), for API schemas.
CANONICAL_PATTERN = r"^[0-9a-f]{2}(?:-[0-9a-f]{2}){5}$"
_CANONICAL = re.compile(CANONICAL_PATTERN.strip("^$"), re.ASCII)
# Spellings remembered by `MacAddress.parse`: a fleet polls with the same few thousand strings.
_PARSED_CACHE_SIZE = 4096


def _fail(text: str, problem: str) -> InvalidMacError:
    shown = text if len(text) <= _MAX_INPUT else text[:_MAX_INPUT] + "…"
    return InvalidMacError(
        f"invalid MAC address {shown!r}: {problem}", value=shown, problem=problem
    )


@attrs.frozen(order=True, repr=False)
class MacAddress:
    """A 48-bit hardware address; ordered and hashed by its numeric value."""

    value: int = attrs.field(validator=attrs.validators.instance_of(int))

    @value.validator
    def _in_range(self, _: attrs.Attribute[int], value: int) -> None:
        if not 0 <= value < 1 << 48:
            raise InvalidMacError(f"MAC address value out of range: {value}", value=str(value))

    @classmethod
    def parse(cls, text: str) -> MacAddress:
        """Parse ``AA:BB:CC:DD:EE:FF``, ``aa-bb-…``, ``aabbccddeeff`` or ``aabb.ccdd.eeff``.

        Letter case and surrounding whitespace do not matter. Raises `InvalidMacError` saying
        what was wrong.
        """
        # Every device request parses its MAC: answered from a bounded cache (values are frozen,
        # so sharing them is safe). Only short plain strings, so the cache stays small.
        if cls is MacAddress and type(text) is str and len(text) <= _MAX_INPUT:
            return _parse_cached(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> MacAddress:
        if not isinstance(text, str):
            raise InvalidMacError(f"MAC address must be a string, not {type(text).__name__}")
        stripped = text.strip()
        if _CANONICAL.fullmatch(stripped):  # the common case: file names and API answers
            return cls(int(stripped.replace("-", ""), 16))
        if not stripped:
            raise _fail(text, "empty")
        if len(stripped) > _MAX_INPUT:
            raise _fail(text, f"too long ({len(stripped)} characters)")
        if not stripped.isascii():
            # int(x, 16) would accept digits such as '٣'; only ASCII hex is a MAC.
            bad = next(c for c in stripped if not c.isascii())
            raise _fail(text, f"non-ASCII character {bad!r}")
        separators = {c for c in stripped if c in _SEPARATORS}
        if len(separators) > 1:
            raise _fail(text, f"mixed separators {''.join(sorted(separators))!r}")
        bad_chars = sorted({c for c in stripped if c not in _HEX and c not in _SEPARATORS})
        if bad_chars:
            raise _fail(text, f"non-hex characters {''.join(bad_chars)!r}")
        if not separators:
            if len(stripped) != 12:
                raise _fail(text, f"wrong length: {len(stripped)} hex digits, expected 12")
            return cls(int(stripped, 16))
        (separator,) = separators
        groups, width = _LAYOUTS[separator]
        parts = stripped.split(separator)
        if len(parts) != groups or any(len(part) != width for part in parts):
            layout = separator.join(["x" * width] * groups)
            raise _fail(text, f"wrong length: groups must look like {layout}")
        return cls(int("".join(parts), 16))

    @classmethod
    def from_file_name(cls, name: str) -> MacAddress | None:
        """The MAC of ``<canonical-mac>.json``, or ``None`` for any other name."""
        if len(name) == 22 and name.endswith(".json") and _CANONICAL.fullmatch(name[:17]):
            return cls(int(name[:17].replace("-", ""), 16))
        return None

    @classmethod
    def from_legacy_file_name(cls, name: str) -> MacAddress:
        """The MAC of ``<mac>.json`` in any spelling `parse` accepts (legacy share files).

        Raises `InvalidMacError` whose ``details["problem"]`` says what is wrong with the name.
        """
        if not name.lower().endswith(".json"):
            raise InvalidMacError(
                f"file name {name!r} does not end in .json", value=name, problem="not a .json file"
            )
        try:
            return cls.parse(name[: -len(".json")])
        except InvalidMacError as exc:
            raise InvalidMacError(
                f"file name is not <mac>.json: {exc.message}",
                value=name,
                problem=exc.details.get("problem", exc.message),
            ) from exc

    @property
    def file_name(self) -> str:
        """The name of the file that stores this device's config."""
        return f"{self}.json"

    def __str__(self) -> str:
        # One C call, much cheaper than slicing a hex string: every listing entry, wire answer
        # and file name goes through here.
        return self.value.to_bytes(6, "big").hex("-")

    def __repr__(self) -> str:
        return f"MacAddress({str(self)!r})"

    def with_separator(self, separator: str = ":", *, upper: bool = False) -> str:
        """Another spelling, e.g. ``AA:BB:CC:DD:EE:FF`` for device firmware that wants colons."""
        text = str(self).replace("-", separator)
        return text.upper() if upper else text


@functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)
def _parse_cached(text: str) -> MacAddress:
    return MacAddress._parse(text)  # noqa: SLF001 -- the cache of the class's own parse
