"""Optional bearer-token auth for admin routes (device, health and metrics routes stay open)."""

from __future__ import annotations

import hmac

from .http_errors import ApiError, ApiErrorCode

__all__ = ["BearerAuth"]


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens in constant time.

    Tokens are kept as bytes and compared with `hmac.compare_digest` against every configured
    token (no early exit), so timing does not reveal which token or how much of one matched.
    """

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(token.encode() for token in tokens)

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (else every route is open)."""
        return bool(self._tokens)

    def __repr__(self) -> str:
        return f"BearerAuth(<{len(self._tokens)} tokens>)"

    def check(self, authorization: str | None) -> None:
        """Return when the header carries a valid token, else raise `ApiError` UNAUTHORIZED."""
        if not self._tokens:
            return
        if not authorization:
            raise ApiError(ApiErrorCode.UNAUTHORIZED, "this route requires an admin bearer token")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise ApiError(
                ApiErrorCode.UNAUTHORIZED, "the Authorization header must be 'Bearer <token>'"
            )
        if not self.accepts(credentials.strip()):
            raise ApiError(ApiErrorCode.UNAUTHORIZED, "the admin token is not valid")

    def accepts(self, credentials: str) -> bool:
        """Whether ``credentials`` is one of the tokens (always ``False`` when none is set)."""
        try:
            presented = credentials.encode("ascii")
        except UnicodeEncodeError:
            presented = b""
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched
