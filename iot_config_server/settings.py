"""Server settings: one frozen value, built from the environment (or by hand in tests).

Variables are ``IOT_CONFIG_<FIELD>``; the old service's ``ESP32_CONFIGS_DIR`` and ``CORS_ORIGINS``
are still read (the new names win) so existing deployments keep working unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs

from iot_config_core import ConfigStore, DocumentLimits, open_store
from iot_config_core.history import DEFAULT_HISTORY_LIMIT

__all__ = ["DEFAULT_STORE_URL", "ENV_PREFIX", "LEGACY_VARIABLES", "Settings", "SettingsError"]

ENV_PREFIX = "IOT_CONFIG_"
#: Old variable -> new one, read only when the new one is unset.
LEGACY_VARIABLES = {
    "ESP32_CONFIGS_DIR": "IOT_CONFIG_STORE",
    "CORS_ORIGINS": "IOT_CONFIG_CORS_ORIGINS",
}

#: The store used when none is configured, and the only one ever created.
DEFAULT_STORE_URL = "./iot-configs"

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
LOG_FORMATS = ("text", "json")

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting with an unusable value; ``variable`` names the field or environment variable."""

    code = "INVALID_SETTING"

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


def _positive(name: str) -> Callable[[Any, attrs.Attribute[int], int], None]:
    def check(_: Any, __: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise SettingsError(name, f"must be at least 1, not {value}")

    return check


def _not_negative(_: Any, __: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise SettingsError("history_limit", f"must be 0 (history off) or more, not {value}")


def _positive_seconds(name: str) -> Callable[[Any, attrs.Attribute[float], float], None]:
    def check(_: Any, __: attrs.Attribute[float], value: float) -> None:
        if not value > 0:
            raise SettingsError(name, f"must be a positive number of seconds, not {value}")

    return check


def default_threads() -> int:
    """Python threads per worker: as many as Granian accepts without warning (2 per CPU + 1).

    A thread waiting on the store costs little, so more helps a slow store; fewer than three
    would leave no thread for store calls beside the two the store gate keeps for probes.
    """
    return 2 * (os.cpu_count() or 1) + 1


def _check_port(_: Any, __: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise SettingsError("port", f"must be between 0 and 65535, not {value}")


def _check_log_level(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if value not in LOG_LEVELS:
        raise SettingsError("log_level", f"must be one of {', '.join(LOG_LEVELS)}, not {value!r}")


def _check_log_format(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if value not in LOG_FORMATS:
        raise SettingsError("log_format", f"must be one of {', '.join(LOG_FORMATS)}, not {value!r}")


def _check_origins(_: Any, __: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for origin in value:
        # An origin is scheme://host[:port] with no path; "*" allows any origin.
        if origin != "*" and ("://" not in origin or origin.rstrip("/").count("/") > 2):
            raise SettingsError("cors_origins", f"{origin!r} is not an origin like https://host")


def _check_tokens(_: Any, __: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for token in value:
        # Tokens travel in an HTTP header: printable ASCII without spaces or commas.
        if not token or not token.isascii() or not token.isprintable() or " " in token:
            raise SettingsError(
                "admin_tokens", "tokens must be non-empty printable ASCII, no spaces"
            )
        if "," in token:
            raise SettingsError("admin_tokens", "tokens must not contain commas")


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _upper(value: str) -> str:
    return value.upper()


def _lower(value: str) -> str:
    return value.lower()


@attrs.frozen
class Settings:
    """Everything the server runner and `create_app` need to know; no secrets in ``repr``."""

    store_url: str = DEFAULT_STORE_URL
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_check_port)
    threads: int = attrs.field(factory=default_threads, validator=_positive("threads"))
    workers: int = attrs.field(default=1, validator=_positive("workers"))
    max_document_bytes: int = attrs.field(
        default=DocumentLimits().max_bytes, validator=_positive("max_document_bytes")
    )
    #: Seconds with store calls in flight and none completing after which the store counts as
    #: hung and store requests are shed (see `iot_config_server.store_gate`).
    store_stall_seconds: float = attrs.field(
        default=1.0, converter=float, validator=_positive_seconds("store_stall_seconds")
    )
    #: One log line per request (method, route, status, duration, request id).
    access_log: bool = False
    cors_origins: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_check_origins
    )
    admin_tokens: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_check_tokens, repr=False
    )
    log_level: str = attrs.field(default="INFO", converter=_upper, validator=_check_log_level)
    log_format: str = attrs.field(default="text", converter=_lower, validator=_check_log_format)
    #: Versions kept per device in the store's history (0: none recorded).
    history_limit: int = attrs.field(default=DEFAULT_HISTORY_LIMIT, validator=_not_negative)

    def __attrs_post_init__(self) -> None:
        if self.store_url.startswith("memory://") and self.workers > 1:
            raise SettingsError(
                "workers",
                f"a memory:// store lives in one process: {self.workers} workers would each "
                "serve their own empty store; use 1 worker or a shared store",
            )

    @property
    def document_limits(self) -> DocumentLimits:
        """The core's document limits these settings ask for (the one place they are built)."""
        return DocumentLimits(max_bytes=self.max_document_bytes)

    @property
    def creates_store(self) -> bool:
        """Whether the store is the default ``./iot-configs``, the only one ever created.

        Any other store is an operator's explicit choice; creating it on a typo would serve an
        empty fleet instead of failing loudly.
        """
        url = self.store_url
        return url == DEFAULT_STORE_URL or (
            "://" not in url and os.path.normpath(url) == os.path.normpath(DEFAULT_STORE_URL)
        )

    def open_store(self, *, create: bool = False) -> ConfigStore:
        """The store these settings name, with their document limits; used by every entry point.

        Creates the default directory (see `creates_store`), any other store only when ``create``
        (an operator's explicit ``--create-store``). Raises the core's `ConfigError` subclasses,
        like `iot_config_core.open_store`.
        """
        return open_store(
            self.store_url,
            create=create or self.creates_store,
            limits=self.document_limits,
            history_limit=self.history_limit,
        )

    @property
    def auth_enabled(self) -> bool:
        """Whether admin routes require a bearer token (they are open when no token is set)."""
        return bool(self.admin_tokens)

    @property
    def log_level_number(self) -> int:
        """``log_level`` as the `logging` module's number."""
        return logging.getLevelNamesMapping()[self.log_level]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from ``IOT_CONFIG_*`` variables (and the legacy names); unset means default.

        Raises `SettingsError` naming the variable whose value is unusable.
        """

        def raw(name: str) -> str | None:
            variable = ENV_PREFIX + name
            value = environ.get(variable)
            if value is None:
                for old, new in LEGACY_VARIABLES.items():
                    if new == variable and old in environ:
                        return environ[old]
            return value

        def variable_for(name: str) -> str:
            variable = ENV_PREFIX + name
            if variable not in environ:
                for old, new in LEGACY_VARIABLES.items():
                    if new == variable and old in environ:
                        return old
            return variable

        kwargs: dict[str, Any] = {}
        fields = {
            "store_url": ("STORE", _text),
            "host": ("HOST", _text),
            "port": ("PORT", _integer),
            "threads": ("THREADS", _integer),
            "workers": ("WORKERS", _integer),
            "max_document_bytes": ("MAX_DOCUMENT_BYTES", _integer),
            "store_stall_seconds": ("STORE_STALL_SECONDS", _number),
            "access_log": ("ACCESS_LOG", _boolean),
            "cors_origins": ("CORS_ORIGINS", _list),
            "admin_tokens": ("ADMIN_TOKENS", _list),
            "log_level": ("LOG_LEVEL", _text),
            "log_format": ("LOG_FORMAT", _text),
            "history_limit": ("HISTORY_LIMIT", _integer),
        }
        for field, (name, parse) in fields.items():
            value = raw(name)
            if value is None:
                continue
            try:
                kwargs[field] = parse(value)
            except ValueError as exc:
                raise SettingsError(variable_for(name), str(exc)) from None
        try:
            return cls(**kwargs)
        except SettingsError as exc:
            name = fields[exc.variable][0] if exc.variable in fields else exc.variable
            # Never echo a token value back: the message names the rule, not the value.
            raise SettingsError(variable_for(name), exc.message) from None


def _text(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _integer(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"must be an integer, not {value[:40]!r}") from None


def _number(value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"must be a number, not {value[:40]!r}") from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _boolean(value: str) -> bool:
    text = value.strip().lower()
    if text not in _TRUE + _FALSE:
        raise ValueError(f"must be one of {', '.join(_TRUE + _FALSE)}, not {value[:40]!r}")
    return text in _TRUE


def _list(value: str) -> tuple[str, ...]:
    """A comma- or whitespace-separated list; empty items are dropped."""
    return tuple(item for item in value.replace(",", " ").split() if item)
