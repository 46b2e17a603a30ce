"""Server settings: one frozen value, built from the environment (or by hand in tests).

Variables are ``IOT_CONFIG_<FIELD>``; the old service's ``ESP32_CONFIGS_DIR`` and ``CORS_ORIGINS``
are still read (the new names win) so existing deployments keep working unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from iot_config_core import (
    ConfigStore,
    DocumentLimits,
    local_store_root,
    open_store,
    store_scheme,
)
from iot_config_core.history import DEFAULT_HISTORY_LIMIT
from iot_config_core.store import DEFAULT_RAW_CACHE_BYTES

from .broker import BrokerAddress

__all__ = ["DEFAULT_STORE_URL", "ENV_PREFIX", "LEGACY_VARIABLES", "Settings", "SettingsError"]

ENV_PREFIX = "IOT_CONFIG_"
#: Old variable -> new one, read only when the new one is unset.
LEGACY_VARIABLES = {
    "ESP32_CONFIGS_DIR": "IOT_CONFIG_STORE",
    "CORS_ORIGINS": "IOT_CONFIG_CORS_ORIGINS",
    # MQTT notifications, under the old service's names.
    "MQTT_URL": "IOT_CONFIG_MQTT_URL",
    "MQTT_USERNAME": "IOT_CONFIG_MQTT_USERNAME",
    "MQTT_PASSWORD": "IOT_CONFIG_MQTT_PASSWORD",
}

#: The store used when none is configured, and the only one ever created.
DEFAULT_STORE_URL = "./iot-configs"

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
LOG_FORMATS = ("text", "json")
#: ``IOT_CONFIG_DEVICE_AUTH``: who may read a device endpoint (see docs/security.md).
DEVICE_AUTH_MODES = ("off", "optional", "required")
LIST_WATCH_MODES = ("auto", "off")


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


def _not_negative(name: str) -> Callable[[Any, attrs.Attribute[int], int], None]:
    def check(_: Any, __: attrs.Attribute[int], value: int) -> None:
        if value < 0:
            raise SettingsError(name, f"must be 0 or more, not {value}")

    return check


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


def _check_mqtt_url(_: Any, __: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        try:
            BrokerAddress.parse(value)
        except ValueError as exc:
            raise SettingsError("mqtt_url", str(exc)) from None


def _check_topic_prefix(_: Any, __: attrs.Attribute[str], value: str) -> None:
    # Published to, so no wildcards; "$" topics are the broker's own.
    if not value or "+" in value or "#" in value or value.startswith(("$", "/")) or "//" in value:
        raise SettingsError("mqtt_topic_prefix", f"{value!r} is not a topic like fleet/configs")


def _check_poll_seconds(_: Any, __: attrs.Attribute[float], value: float) -> None:
    if not 0 < value <= 3600:
        raise SettingsError("mqtt_poll_seconds", f"must be between 0 and 3600, not {value}")


def _strip_slashes(value: str) -> str:
    return value.strip("/")


def _check_device_auth(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if value not in DEVICE_AUTH_MODES:
        raise SettingsError(
            "device_auth", f"must be one of {', '.join(DEVICE_AUTH_MODES)}, not {value!r}"
        )


def _check_list_watch(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if value not in LIST_WATCH_MODES:
        raise SettingsError(
            "list_watch", f"must be one of {', '.join(LIST_WATCH_MODES)}, not {value!r}"
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
    #: Memory (bytes) for the documents each worker keeps to answer device polls without
    #: reading the file; 0 keeps none (every poll reads). See docs/capacity.md.
    device_cache_bytes: int = attrs.field(
        default=DEFAULT_RAW_CACHE_BYTES, validator=_not_negative("device_cache_bytes")
    )
    #: ``auto``: a listing of a store on a local filesystem stats only the files inotify reports
    #: changed; ``off``: every listing stats every file. See docs/capacity.md.
    list_watch: str = attrs.field(default="auto", converter=_lower, validator=_check_list_watch)
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
    device_auth: str = attrs.field(default="off", converter=_lower, validator=_check_device_auth)
    device_secret_file: str | None = None

    # MQTT notifications (iot_config_server.notifications): off while mqtt_url is None.
    mqtt_url: str | None = attrs.field(default=None, validator=_check_mqtt_url)
    mqtt_username: str | None = None
    mqtt_password: str | None = attrs.field(default=None, repr=False)
    mqtt_ca_file: str | None = None
    mqtt_topic_prefix: str = attrs.field(
        default="iotsupport/devices",
        converter=_strip_slashes,
        validator=_check_topic_prefix,
    )
    mqtt_poll_seconds: float = attrs.field(default=5.0, validator=_check_poll_seconds)
    #: Versions kept per device in the store's history (0: none recorded).
    history_limit: int = attrs.field(
        default=DEFAULT_HISTORY_LIMIT, validator=_not_negative("history_limit")
    )

    def __attrs_post_init__(self) -> None:
        if store_scheme(self.store_url) == "memory" and self.workers > 1:
            raise SettingsError(
                "workers",
                f"a memory:// store lives in one process: {self.workers} workers would each "
                "serve their own empty store; use 1 worker or a shared store",
            )
        if self.device_auth != "off" and self.device_secret_file is None:
            raise SettingsError(
                "device_secret_file", f"device_auth {self.device_auth!r} needs a secret file"
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
        root = local_store_root(self.store_url)
        return root is not None and root == local_store_root(DEFAULT_STORE_URL)

    def open_store(self, *, create: bool | None = None) -> ConfigStore:
        """The store these settings name, with their document limits; used by every entry point.

        By default (the server) only the default directory is created (see `creates_store`);
        ``create`` says exactly whether to create a missing store (the CLI: ``--create-store``,
        and even the default store only then). Raises the core's `ConfigError` subclasses, like
        `iot_config_core.open_store`.
        """
        if create is None:
            create = self.creates_store
        return open_store(
            self.store_url,
            create=create,
            limits=self.document_limits,
            device_cache_bytes=self.device_cache_bytes,
            history_limit=self.history_limit,
            list_watch=self.list_watch == "auto",
        )

    @property
    def auth_enabled(self) -> bool:
        """Whether admin routes require a bearer token (they are open when no token is set)."""
        return bool(self.admin_tokens)

    @property
    def mqtt_broker(self) -> BrokerAddress | None:
        """The broker to announce changes to, or ``None`` when notifications are off."""
        return None if self.mqtt_url is None else BrokerAddress.parse(self.mqtt_url)

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
            "device_cache_bytes": ("DEVICE_CACHE_BYTES", _integer),
            "list_watch": ("LIST_WATCH", _text),
            "access_log": ("ACCESS_LOG", _boolean),
            "cors_origins": ("CORS_ORIGINS", _list),
            "admin_tokens": ("ADMIN_TOKENS", _list),
            "log_level": ("LOG_LEVEL", _text),
            "log_format": ("LOG_FORMAT", _text),
            "device_auth": ("DEVICE_AUTH", _text),
            "device_secret_file": ("DEVICE_SECRET_FILE", _text),
            "mqtt_url": ("MQTT_URL", _optional_text),
            "mqtt_username": ("MQTT_USERNAME", _optional_text),
            "mqtt_password": ("MQTT_PASSWORD", _optional_secret),
            "mqtt_ca_file": ("MQTT_CA_FILE", _optional_text),
            "mqtt_topic_prefix": ("MQTT_TOPIC_PREFIX", _text),
            "mqtt_poll_seconds": ("MQTT_POLL_SECONDS", _seconds),
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


def _optional_text(value: str) -> str | None:
    """Text, where empty means unset (``MQTT_URL=`` turns notifications off)."""
    return value.strip() or None


def _optional_secret(value: str) -> str | None:
    """A password as given (spaces may belong to it); empty means unset."""
    return value or None


def _seconds(value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {value[:40]!r}") from None


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
