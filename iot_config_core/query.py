"""Pages and filters over a fleet listing, shared by ``GET /api/configs`` and ``iot-config list``.

A page is the next ``limit`` matching summaries in MAC order *after* the MAC its cursor names. The
cursor holds that MAC and nothing else, so it stays valid across writes, restarts and replicas:
a config stored for the whole walk through the pages is returned exactly once, whatever is
created or deleted between pages (those may or may not show, depending on where they sort).
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_right
from collections.abc import Sequence

import attrs

from .errors import InvalidQueryError
from .mac import MacAddress
from .model import ConfigSummary

__all__ = ["MAX_FILTER_LENGTH", "MAX_LIMIT", "ListQuery", "Page", "decode_cursor", "encode_cursor"]

#: The most summaries one page may ask for: an answer stays a few megabytes at most.
MAX_LIMIT = 10_000
#: Filters are substrings of names a person typed; anything longer is a mistake.
MAX_FILTER_LENGTH = 200
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
# Versioned so a later cursor format can be told apart from this one.
_CURSOR_PREFIX = "m1."


def encode_cursor(last: MacAddress) -> str:
    """The opaque cursor of the page that follows ``last``."""
    packed = base64.urlsafe_b64encode(last.value.to_bytes(6, "big")).decode("ascii")
    return _CURSOR_PREFIX + packed


def decode_cursor(cursor: str) -> MacAddress:
    """The MAC a cursor from `encode_cursor` names; `InvalidQueryError` for anything else."""
    if cursor.startswith(_CURSOR_PREFIX) and len(cursor) == len(_CURSOR_PREFIX) + 8:
        try:
            text = cursor[len(_CURSOR_PREFIX) :].encode("ascii")
            raw = base64.b64decode(text, altchars=b"-_", validate=True)
        except (binascii.Error, UnicodeEncodeError):
            pass
        else:
            if len(raw) == 6:
                return MacAddress(int.from_bytes(raw, "big"))
    raise InvalidQueryError(
        "the cursor is not one an earlier page gave (pass it on exactly as given)",
        parameter="cursor",
    )


def _check_limit(_: object, __: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_LIMIT:
        raise InvalidQueryError(
            f"limit must be between 1 and {MAX_LIMIT}, not {value}", parameter="limit"
        )


def _check_filter(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and len(value) > MAX_FILTER_LENGTH:
        raise InvalidQueryError(
            f"{attribute.name} is longer than {MAX_FILTER_LENGTH} characters",
            parameter=attribute.name,
        )


def _folded(value: str | None) -> str | None:
    return None if value is None or value == "" else value.casefold()


@attrs.frozen
class ListQuery:
    """Which summaries a listing answer holds; the default (no field set) is the whole fleet.

    ``name`` and ``entity_id`` match case-insensitive substrings of ``device_name`` and
    ``device_entity_id`` (a config without the field never matches); ``enable_ota`` matches the
    field exactly. ``after`` is the MAC of a cursor; ``limit`` bounds the page.
    """

    name: str | None = attrs.field(default=None, converter=_folded, validator=_check_filter)
    entity_id: str | None = attrs.field(default=None, converter=_folded, validator=_check_filter)
    enable_ota: bool | None = None
    after: MacAddress | None = None
    limit: int | None = attrs.field(default=None, validator=_check_limit)

    @classmethod
    def from_text(
        cls,
        *,
        name: str | None = None,
        entity_id: str | None = None,
        enable_ota: str | None = None,
        cursor: str | None = None,
        limit: str | None = None,
    ) -> ListQuery:
        """The query of text parameters (a URL's query string, a command line).

        ``enable_ota`` is ``true`` or ``false``; ``limit`` a whole number; ``cursor`` a
        ``next_cursor`` handed out earlier. `InvalidQueryError` names the parameter that is not.
        """
        ota: bool | None = None
        if enable_ota is not None:
            ota = _BOOLEANS.get(enable_ota.strip().lower())
            if ota is None:
                raise InvalidQueryError(
                    f"enable_ota must be true or false, not {enable_ota[:20]!r}",
                    parameter="enable_ota",
                )
        count: int | None = None
        if limit is not None:
            text = limit.strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 9):
                raise InvalidQueryError(
                    f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit[:20]!r}",
                    parameter="limit",
                )
            count = int(text)
        after = None if cursor is None else decode_cursor(cursor)
        return cls(name=name, entity_id=entity_id, enable_ota=ota, after=after, limit=count)

    @property
    def filtered(self) -> bool:
        """Whether any filter is set (paging alone is not filtering)."""
        return self.name is not None or self.entity_id is not None or self.enable_ota is not None

    def matches(self, summary: ConfigSummary) -> bool:
        """Whether ``summary`` passes every filter that is set."""
        if self.enable_ota is not None and summary.enable_ota is not self.enable_ota:
            return False
        if self.name is not None and (
            summary.device_name is None or self.name not in summary.device_name.casefold()
        ):
            return False
        return self.entity_id is None or (
            summary.device_entity_id is not None
            and self.entity_id in summary.device_entity_id.casefold()
        )

    def select(self, summaries: Sequence[ConfigSummary]) -> Page:
        """The page of ``summaries`` (sorted by MAC, as a `Listing` holds them) this query asks for.

        Starts after the cursor's MAC by bisection, so a page costs its own length (plus the
        summaries the filters pass over), not the fleet's.
        """
        start = 0
        if self.after is not None:
            start = bisect_right(summaries, self.after.value, key=_mac_value)
        if not self.filtered:
            end = len(summaries) if self.limit is None else min(start + self.limit, len(summaries))
            chosen = tuple(summaries[start:end])
            more = end < len(summaries)
        else:
            picked: list[ConfigSummary] = []
            more = False
            for index in range(start, len(summaries)):
                summary = summaries[index]
                if self.matches(summary):
                    if self.limit is not None and len(picked) == self.limit:
                        more = True
                        break
                    picked.append(summary)
            chosen = tuple(picked)
        cursor = encode_cursor(chosen[-1].mac_address) if more and chosen else None
        return Page(chosen, cursor)


def _mac_value(summary: ConfigSummary) -> int:
    return summary.mac_address.value


@attrs.frozen
class Page:
    """One answer to a `ListQuery`: its summaries, and the cursor of the next page if any."""

    summaries: tuple[ConfigSummary, ...]
    next_cursor: str | None
