"""Entity tags and the ``If-Match`` / ``If-None-Match`` conditions of RFC 9110.

The store evaluates preconditions itself (so scripts get the same no-lost-update guarantee as HTTP
clients); the server only forwards header values here.
"""

from __future__ import annotations

import re

import attrs

from .errors import InvalidETagError

__all__ = ["ETagCondition", "EntityTag"]

_MAX_HEADER = 8192
# One list member: an optional weak prefix and a quoted tag, or (leniently) a bare token, as sent
# by clients that strip quotes; characters per RFC 9110's etagc. A bare token excludes "*", which
# is only valid alone, so "*, ..." is malformed rather than a tag named "*".
_MEMBER = re.compile(
    r'\s*(?:(W/)?"([\x21\x23-\x7e\x80-\xff]*)"|([\x21\x23-\x29\x2b\x2d-\x7e]+))\s*(?:,|$)'
)


@attrs.frozen
class EntityTag:
    """One entity tag: its opaque value (without quotes) and whether it is weak."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'


@attrs.frozen
class ETagCondition:
    """A parsed ``If-Match`` or ``If-None-Match`` value: ``*`` or a list of entity tags."""

    any: bool = False
    tags: tuple[EntityTag, ...] = ()

    @classmethod
    def parse(cls, value: str | ETagCondition) -> ETagCondition:
        """Parse a header value, a bare ETag such as `StoredConfig.etag`, or ``*``."""
        if isinstance(value, ETagCondition):
            return value
        if not isinstance(value, str):
            raise InvalidETagError(f"entity tag must be a string, not {type(value).__name__}")
        text = value.strip()
        if len(text) > _MAX_HEADER:
            raise InvalidETagError(f"entity tag list too long ({len(text)} characters)")
        if text == "*":
            return cls(any=True)
        tags: list[EntityTag] = []
        pos = 0
        while pos < len(text):
            match = _MEMBER.match(text, pos)
            if match is None or match.end() == pos:
                raise InvalidETagError(f"malformed entity tag list {text[:80]!r}", value=text[:80])
            weak, quoted, bare = match.groups()
            tags.append(EntityTag(quoted if bare is None else bare, weak=weak is not None))
            pos = match.end()
        if not tags:
            raise InvalidETagError("empty entity tag list")
        return cls(tags=tuple(tags))

    def matches_strong(self, etag: str | None) -> bool:
        """``If-Match`` semantics: true when ``etag`` exists and equals a strong tag in the list."""
        if etag is None:
            return False
        return self.any or any(not t.weak and t.opaque == etag for t in self.tags)

    def matches_weak(self, etag: str | None) -> bool:
        """``If-None-Match`` semantics: weak comparison, so ``W/"x"`` matches ``"x"``."""
        if etag is None:
            return False
        return self.any or any(t.opaque == etag for t in self.tags)

    def __str__(self) -> str:
        return "*" if self.any else ", ".join(str(t) for t in self.tags)
