"""Who may read a device endpoint: the device itself (its token), an admin, or anyone (mode off).

``IOT_CONFIG_DEVICE_AUTH`` picks the mode:

- ``off``: the endpoint is open, as it always was (`DeviceAuth.active` is false and nothing here
  runs on a request);
- ``optional``: a request without credentials is served and counted, so an operator sees which
  devices are not provisioned yet; credentials that are present must be valid;
- ``required``: only the device's own unrevoked token, or an admin token, reads it. The check runs
  before the store is touched, so a caller without a valid token gets the same 401 whether the
  MAC has a config or not: MACs cannot be enumerated, and a scan costs no store I/O.

Tokens come from ``Authorization: Bearer <token>`` or, for HTTP clients that cannot set headers,
the ``access_token`` query parameter (RFC 6750's name). No log line here contains a token or a
query string; the server logs paths without their query.

Metrics stay bounded: failures are counted by reason, accepted tokens of secret versions older
than the newest by version (a rotation's progress; the steady state counts nothing, so an
authenticated poll pays for no counter), and unauthenticated reads in one counter. Which devices
read without a token is told in a log line once per MAC and hour (the counter says how much, the
log says who), instead of one series per device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import parse_qs

from iot_config_core import ConfigStore, MacAddress
from iot_config_core.device_tokens import (
    DeviceKeyring,
    DeviceSecretError,
    InvalidDeviceTokenError,
    RevocationList,
    load_keyring,
)

from .auth import BearerAuth
from .http_errors import ApiError, ApiErrorCode
from .metrics import AppMetrics
from .settings import Settings

__all__ = ["FAILURE_REASONS", "QUERY_PARAMETER", "DeviceAuth", "LogBudget", "settings_problem"]

log = logging.getLogger(__name__)

QUERY_PARAMETER = "access_token"
#: The ``reason`` label values of failed device authentications.
FAILURE_REASONS = ("missing", "malformed", "unknown_version", "mismatch", "revoked")
#: One answer for every failure, so the body tells a caller nothing about why (or whether the MAC
#: exists); the reason goes to the metric and the log.
_REFUSAL = "a valid device token for this MAC is required"
# MACs remembered as logged for reading without a token; past it the memory starts afresh (each
# is then logged once more), so a scan of invented MACs cannot grow it without bound.
_MAX_TRACKED_DEVICES = 100_000

Authorize = Callable[[str, dict[str, Any]], None]


class LogBudget:
    """At most ``lines`` log lines per ``interval`` seconds; the rest are counted, not written.

    A scan or a misprovisioned fleet must not flood the log; the next line written says how
    many were held back.
    """

    def __init__(
        self, lines: int, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lines = lines
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window = -float("inf")
        self._used = 0
        self._held = 0

    def take(self) -> int | None:
        """``None`` when over budget, else how many lines were held back since the last one."""
        now = self._clock()
        with self._lock:
            if now - self._window >= self._interval:
                self._window, self._used = now, 0
            if self._used >= self._lines:
                self._held += 1
                return None
            self._used += 1
            held, self._held = self._held, 0
            return held


class DeviceAuth:
    """The device endpoints' access check of one app (see the module docstring)."""

    def __init__(
        self,
        mode: str,
        keyring: DeviceKeyring | None,
        revocations: RevocationList | None,
        admin: BearerAuth,
        metrics: AppMetrics,
        *,
        log_budget: LogBudget | None = None,
        remind_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode != "off" and (keyring is None or revocations is None):
            raise ValueError(f"device auth mode {mode!r} needs a keyring and a revocation list")
        self.mode = mode
        self._keyring = keyring
        self._revocations = revocations
        self._admin = admin
        # Separate budgets: a fleet not provisioned yet must not crowd out the failure lines.
        self._failure_budget = log_budget or LogBudget(lines=20, interval=60.0)
        self._unauthenticated_budget = LogBudget(lines=20, interval=60.0)
        self._remind = remind_seconds
        self._clock = clock
        self._unauthenticated_seen: dict[int, float] = {}
        failures = metrics.counter(
            "device_auth_failures",
            "Device endpoint requests refused for their credentials, by reason.",
            ("reason",),
        )
        self._failures = {reason: failures.labels(reason) for reason in FAILURE_REASONS}
        old_versions = metrics.counter(
            "device_auth_old_version_accepted",
            "Device endpoint requests accepted with a token of a secret version older than the "
            "newest, by version: a rotation is done when these stop growing.",
            ("key_version",),
        )
        versions = () if keyring is None else tuple(keyring.secrets)
        newest = max(versions, default=0)
        self._old_versions = {v: old_versions.labels(f"v{v}") for v in versions if v != newest}
        self._unauthenticated = metrics.counter(
            "device_unauthenticated_reads",
            "Device endpoint requests without a device token (mode optional).",
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: ConfigStore,
        admin: BearerAuth,
        metrics: AppMetrics,
    ) -> DeviceAuth:
        """The check ``settings`` ask for; `DeviceSecretError` when the secret file is unusable."""
        if settings.device_auth == "off" or settings.device_secret_file is None:
            return cls("off", None, None, admin, metrics)
        keyring = load_keyring(settings.device_secret_file)
        revocations = RevocationList(store.backend)
        log.info("device auth %s, secret versions %s", settings.device_auth, list(keyring.secrets))
        return cls(settings.device_auth, keyring, revocations, admin, metrics)

    @property
    def active(self) -> bool:
        """Whether device requests are checked at all (mode is not ``off``)."""
        return self.mode != "off"

    def check(self, mac: str, environ: dict[str, Any]) -> None:
        """Return when this request may read ``mac``; raise `ApiError` UNAUTHORIZED otherwise.

        A MAC that does not parse raises the core's `InvalidMacError` (a 400, as without auth):
        no config can exist for it, so the answer reveals nothing.
        """
        address = MacAddress.parse(mac)
        credential, from_header = _credential(environ)
        if credential is None:
            if self.mode == "optional":
                self._count_unauthenticated(address)
                return
            self._refuse(address, "missing")
        keyring, revocations = self._keyring, self._revocations
        assert keyring is not None  # see __init__
        assert revocations is not None
        try:
            version = keyring.verify(address, credential)
        except InvalidDeviceTokenError as exc:
            # Admin tokens only from the header: they must not end up in URLs.
            if from_header and self._admin.accepts(credential):
                return
            self._refuse(address, str(exc.details.get("reason", "mismatch")))
        if revocations.is_revoked(address, version):
            self._refuse(address, "revoked")
        old = self._old_versions.get(version)
        if old is not None:
            old.inc()

    def _refuse(self, mac: MacAddress, reason: str) -> NoReturn:
        self._failures[reason].inc()
        held = self._failure_budget.take()
        if held is not None:
            log.warning(
                "device auth failed for %s: %s%s",
                mac,
                reason,
                f" ({held} similar lines held back)" if held else "",
                extra={"mac_address": str(mac), "reason": reason},
            )
        raise ApiError(ApiErrorCode.UNAUTHORIZED, _REFUSAL)

    def _count_unauthenticated(self, mac: MacAddress) -> None:
        self._unauthenticated.inc()
        now = self._clock()
        seen = self._unauthenticated_seen
        last = seen.get(mac.value)
        if last is not None and now - last < self._remind:
            return
        if last is None and len(seen) >= _MAX_TRACKED_DEVICES:
            seen.clear()
        seen[mac.value] = now
        held = self._unauthenticated_budget.take()
        if held is not None:
            log.info(
                "device %s read its config without a device token%s",
                mac,
                f" ({held} similar lines held back)" if held else "",
                extra={"mac_address": str(mac)},
            )


def settings_problem(settings: Settings) -> str | None:
    """Why the device auth settings cannot work (the secret file), or ``None``.

    Checked once before serving, so a bad file stops the server at start instead of failing
    every worker.
    """
    if settings.device_auth == "off" or settings.device_secret_file is None:
        return None
    try:
        load_keyring(settings.device_secret_file)
    except DeviceSecretError as exc:
        return exc.message
    return None


def _credential(environ: dict[str, Any]) -> tuple[str | None, bool]:
    """The presented credential and whether it came from the header (which wins over the query).

    An ``Authorization`` header that is not ``Bearer <token>`` counts as a malformed credential,
    not as none: a device that sends something must send something valid.
    """
    header = environ.get("HTTP_AUTHORIZATION")
    if header:
        if header.startswith("Bearer "):  # what every device sends: no further parsing
            return header[7:].strip(), True
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip(), True
        return "", True
    query = environ.get("QUERY_STRING")
    if query and QUERY_PARAMETER in query:
        values = parse_qs(query).get(QUERY_PARAMETER)
        if values:
            return values[0], False
    return None, False
