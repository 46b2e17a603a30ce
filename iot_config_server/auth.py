"""Optional bearer-token auth for admin routes (device, health and metrics routes stay open)."""

from __future__ import annotations

import hmac
import re

from .http_errors import ApiError, ApiErrorCode

__all__ = ["BearerAuth", "token_name"]

# ``name:token``: the name is who the version history says made a change. An entry that does not
# start like this is an unnamed token.
_NAMED = re.compile(r"([A-Za-z0-9_.@-]{1,64}):(.+)", re.ASCII)


def token_name(entry: str) -> tuple[str | None, str]:
    """The name and the token of one configured ``[name:]token`` entry."""
    match = _NAMED.fullmatch(entry)
    return (None, entry) if match is None else (match[1], match[2])


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens in constant time.

    Tokens are kept as bytes and compared with `hmac.compare_digest` against every configured
    token (no early exit), so timing does not reveal which token or how much of one matched.
    An entry ``name:token`` names its token; the whole entry is accepted as well, so a token
    that happened to contain a colon before names existed keeps working (as an unnamed one).
    """

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._count = len(tokens)
        self._tokens: tuple[tuple[str | None, bytes], ...] = tuple(
            (name, token.encode())
            for entry in tokens
            for name, token in {token_name(entry), (None, entry)}
        )

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (else every route is open)."""
        return bool(self._tokens)

    def __repr__(self) -> str:
        return f"BearerAuth(<{self._count} tokens>)"

    def check(self, authorization: str | None) -> str | None:
        """The valid token's name (``None``: unnamed, or no tokens configured), else 401."""
        if not self._tokens:
            return None
        if not authorization:
            raise ApiError(ApiErrorCode.UNAUTHORIZED, "this route requires an admin bearer token")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise ApiError(
                ApiErrorCode.UNAUTHORIZED, "the Authorization header must be 'Bearer <token>'"
            )
        matched, name = self._match(credentials.strip())
        if not matched:
            raise ApiError(ApiErrorCode.UNAUTHORIZED, "the admin token is not valid")
        return name

    def accepts(self, credentials: str) -> bool:
        """Whether ``credentials`` is one of the tokens (always ``False`` when none is set)."""
        return self._match(credentials)[0]

    def _match(self, credentials: str) -> tuple[bool, str | None]:
        """Whether ``credentials`` is a configured token, and that token's name."""
        try:
            presented = credentials.encode("ascii")
        except UnicodeEncodeError:
            presented = b""
        matched = False
        author = None
        for name, token in self._tokens:
            hit = hmac.compare_digest(presented, token)
            matched |= hit
            author = name if hit and name is not None else author
        return matched, author
