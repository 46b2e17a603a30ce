"""Request ids: taken from ``X-Request-ID`` when sane, generated otherwise, visible to logging.

The id lives in a context variable for the duration of a request, so every log line written while
handling it (ours and the core's) carries it without passing it around.
"""

from __future__ import annotations

import contextvars
import re
from random import getrandbits as _getrandbits

__all__ = ["ENVIRON_KEY", "HEADER", "current_request_id", "request_id_from_environ", "sanitize"]

HEADER = "X-Request-ID"
ENVIRON_KEY = "iot_config.request_id"
MAX_LENGTH = 128
# Token characters a log line and a header can carry unescaped (base64, UUIDs, W3C trace ids).
_SANE = re.compile(rf"[A-Za-z0-9._:+/=@-]{{1,{MAX_LENGTH}}}", re.ASCII)

#: The id of the request being handled by this thread/task, ``"-"`` outside requests.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "iot_config_request_id", default="-"
)


def sanitize(value: str | None) -> str | None:
    """``value`` if it is a usable id, else ``None`` (the caller generates a fresh one)."""
    if value is not None and _SANE.fullmatch(value):
        return value
    return None


def new_request_id() -> str:
    """24 random hex digits: unique, not secret.

    `random` rather than `os.urandom`: a syscall per request is measurable on the device path,
    and `random` is reseeded in forked workers, so processes do not repeat each other's ids.
    """
    return f"{_getrandbits(96):024x}"


def request_id_from_environ(environ: dict[str, object]) -> str:
    """The id of this request, computed once and remembered in the WSGI environ."""
    rid = environ.get(ENVIRON_KEY)
    if isinstance(rid, str):
        return rid
    header = environ.get("HTTP_X_REQUEST_ID")
    rid = sanitize(header if isinstance(header, str) else None) or new_request_id()
    environ[ENVIRON_KEY] = rid
    return rid
