"""Server settings: one frozen value, built from the environment (or by hand in tests).

Variables are ``IOT_CONFIG_<FIELD>``; the old service's ``ESP32_CONFIGS_DIR`` and ``CORS_ORIGINS``
are still read (the new names win) so existing deployments keep working unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs

__all__ = ["ENV_PREFIX", "LEGACY_VARIABLES", "Settings", "SettingsError"]

ENV_PREFIX = "IOT_CONFIG_"
#: Old variable -> new one, read only when the new one is unset.
LEGACY_VARIABLES = {
    "ESP32_CONFIGS_DIR": "IOT_CONFIG_STORE",
    "CORS_ORIGINS": "IOT_CONFIG_CORS_ORIGINS",
}

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
LOG_FORMATS = ("text", "json")
#: ``IOT_CONFIG_DEVICE_AUTH``: who may read a device endpoint (see docs/security.md).
DEVICE_AUTH_MODES = ("off", "optional", "required")

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


def _check_device_auth(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if value not in DEVICE_AUTH_MODES:
        raise SettingsError(
            "device_auth", f"must be one of {', '.join(DEVICE_AUTH_MODES)}, not {value!r}"
        )


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _upper(value: str) -> str:
    return value.upper()


def _lower(value: str) -> str:
    return value.lower()


@attrs.frozen
class Settings:
    """Everything the server runner and `create_app` need to know; no secrets in ``repr``."""

    store_url: str = "./iot-configs"
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_check_port)
    threads: int = attrs.field(default=8, validator=_positive("threads"))
    workers: int = attrs.field(default=1, validator=_positive("workers"))
    max_document_bytes: int = attrs.field(
        default=1048576, validator=_positive("max_document_bytes")
    )
    cors_origins: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_check_origins
    )
    admin_tokens: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_check_tokens, repr=False
    )
    log_level: str = attrs.field(default="INFO", converter=_upper, validator=_check_log_level)
    log_format: str = attrs.field(default="text", converter=_lower, validator=_check_log_format)
    device_auth: str = attrs.field(default="off", converter=_lower, validator=_check_device_auth)
    device_secret_file: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.device_auth != "off" and self.device_secret_file is None:
            raise SettingsError(
                "device_secret_file", f"device_auth {self.device_auth!r} needs a secret file"
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
            "cors_origins": ("CORS_ORIGINS", _list),
            "admin_tokens": ("ADMIN_TOKENS", _list),
            "log_level": ("LOG_LEVEL", _text),
            "log_format": ("LOG_FORMAT", _text),
            "device_auth": ("DEVICE_AUTH", _text),
            "device_secret_file": ("DEVICE_SECRET_FILE", _text),
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


def _list(value: str) -> tuple[str, ...]:
    """A comma- or whitespace-separated list; empty items are dropped."""
    return tuple(item for item in value.replace(",", " ").split() if item)
