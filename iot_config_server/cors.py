"""CORS for the configured web-UI origins, including preflight answers."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = ["CorsPolicy"]

#: Request headers a browser may send cross-origin (preflight ``Access-Control-Allow-Headers``).
ALLOWED_HEADERS = "Authorization, Content-Type, If-Match, If-None-Match, X-Request-ID"
#: Response headers scripts on an allowed origin may read.
EXPOSED_HEADERS = "ETag, Link, X-Request-ID, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"


def _origin_set(origins: Iterable[str]) -> frozenset[str]:
    return frozenset(origins)


@attrs.frozen
class CorsPolicy:
    """Which origins may call the API from a browser; ``"*"`` allows any (without credentials)."""

    origins: frozenset[str] = attrs.field(converter=_origin_set)

    @property
    def enabled(self) -> bool:
        """Whether any origin is configured (else no CORS headers are sent)."""
        return bool(self.origins)

    def allowed_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or ``None`` if not allowed."""
        if origin is None or not self.origins:
            return None
        if origin in self.origins:
            return origin
        if "*" in self.origins:
            return "*"
        return None

    def headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers for an ordinary (non-preflight) answer to a request from ``origin``.

        ``Vary: Origin`` goes on every answer while CORS is on (unless any origin is allowed), so
        a shared cache never hands one origin's answer to another.
        """
        if not self.origins:
            return []
        allowed = self.allowed_origin(origin)
        vary = [] if self.origins == {"*"} else [("Vary", "Origin")]
        if allowed is None:
            return vary
        return [
            ("Access-Control-Allow-Origin", allowed),
            ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
            *vary,
        ]

    def preflight_headers(self, origin: str | None, allow: str) -> list[tuple[str, str]]:
        """Headers answering a preflight for a route that accepts the methods in ``allow``."""
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return []
        headers = [
            ("Access-Control-Allow-Origin", allowed),
            ("Access-Control-Allow-Methods", allow),
            ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
            ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        ]
        if allowed != "*":
            headers.append(("Vary", "Origin"))
        return headers
