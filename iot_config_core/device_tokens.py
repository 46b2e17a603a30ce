"""Per-device tokens: derived from one operator secret, verified in constant time, revocable.

A device's token is ``v<N>.<base64url(HMAC-SHA256(secret_N, message(N, mac)))>``: nothing per
device is stored, every replica holding the secret file derives the same token, and a token is
worth nothing for any other MAC. The key version ``N`` travels in the token, so during a rotation
the new secret signs while the old ones still verify (`DeviceKeyring`).

Revocation is the one per-device fact that must be stored: a small JSON document in the store's
root, under a hidden name that listings skip (`RevocationList`). Revoking a MAC refuses its
tokens of every key version the keyring had at that moment; a token made with a later secret
version (after a rotation) is accepted again, so a device is re-admitted by re-provisioning it,
never by un-revoking the credential that leaked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs

from .backend import ABSENT, Absent, Backend, VersionConflict
from .errors import ConfigError, ErrorCode, StoreUnavailableError
from .mac import MacAddress

__all__ = [
    "MIN_SECRET_BYTES",
    "REVOCATIONS_NAME",
    "DeviceKeyring",
    "DeviceSecretError",
    "InvalidDeviceTokenError",
    "Revocation",
    "RevocationList",
    "load_keyring",
    "new_secret_line",
    "parse_keyring",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Secrets shorter than this are refused: the token is only as strong as the secret.
MIN_SECRET_BYTES = 32
#: The revocation list's name in the store root: hidden (listings skip dot names), not a MAC.
REVOCATIONS_NAME = ".device-token-revocations.json"
# Domain separation: the MAC under this key is never signed for any other purpose.
_CONTEXT = b"iot-config/device-token\x00"
_TOKEN = re.compile(r"v([1-9][0-9]{0,8})\.([A-Za-z0-9_-]{43})", re.ASCII)
_SECRET_LINE = re.compile(r"v([1-9][0-9]{0,8}):(.+)", re.ASCII)
_MAX_REVOCATIONS_BYTES = 16 * 1024 * 1024
_MAX_WRITE_ATTEMPTS = 16
# Expected tokens remembered: more than a fleet polls, so the bound is a backstop only.
_EXPECTED_CACHE_SIZE = 200_000


class InvalidDeviceTokenError(ConfigError):
    """A token that is malformed, of an unknown key version, or not the token of this MAC."""

    code = ErrorCode.INVALID_DEVICE_TOKEN


class DeviceSecretError(ConfigError, ValueError):
    """The secret file is missing, unreadable or malformed (``details``: ``path``, ``line``)."""

    code = ErrorCode.INVALID_DEVICE_SECRET


def _sorted_secrets(secrets: Mapping[int, bytes]) -> dict[int, bytes]:
    return dict(sorted(secrets.items()))


def _message(version: int, mac: MacAddress) -> bytes:
    return b"%s%d\x00%s" % (_CONTEXT, version, str(mac).encode())


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@attrs.frozen(repr=False)
class DeviceKeyring:
    """Secret versions by number; the newest signs, every one verifies.

    Each secret's HMAC state is prepared once; a verification copies it, so a device request
    costs one HMAC over a few dozen bytes and one constant-time comparison.
    """

    secrets: Mapping[int, bytes] = attrs.field(converter=_sorted_secrets)
    _keys: Mapping[int, Any] = attrs.field(init=False)
    _prefixes: Mapping[str, tuple[int, Any]] = attrs.field(init=False)
    # The expected token per (version, MAC) of devices seen: a poll then costs no HMAC. It is
    # derived from the secrets, so it is exactly as sensitive as they are, and lives as long.
    _expected: dict[tuple[int, int], bytes] = attrs.field(init=False)

    @secrets.validator
    def _check(self, _: attrs.Attribute[Mapping[int, bytes]], value: Mapping[int, bytes]) -> None:
        if not value:
            raise DeviceSecretError("a device keyring needs at least one secret version")
        for version, secret in value.items():
            if version < 1:
                raise DeviceSecretError(f"secret version must be at least 1, not {version}")
            if len(secret) < MIN_SECRET_BYTES:
                raise DeviceSecretError(
                    f"secret v{version} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
                    "are needed (generate one with `iot-config device-token --new-secret`)",
                    version=version,
                )

    def __attrs_post_init__(self) -> None:
        keys = {v: hmac.new(s, digestmod=hashlib.sha256) for v, s in self.secrets.items()}
        object.__setattr__(self, "_keys", keys)
        # "v<N>" -> (N, key): a token's version prefix is found without parsing it.
        object.__setattr__(self, "_prefixes", {f"v{v}": (v, k) for v, k in keys.items()})
        object.__setattr__(self, "_expected", {})

    def __repr__(self) -> str:
        return f"DeviceKeyring(versions={list(self.secrets)})"

    @property
    def newest(self) -> int:
        """The version that signs new tokens."""
        return max(self.secrets)

    def token(self, mac: MacAddress | str, version: int | None = None) -> str:
        """The token of ``mac`` under ``version`` (default: the newest)."""
        address = mac if isinstance(mac, MacAddress) else MacAddress.parse(mac)
        version = self.newest if version is None else version
        key = self._keys.get(version)
        if key is None:
            raise DeviceSecretError(f"no secret version v{version}", version=version)
        return f"v{version}.{self._sign(key, version, address)}"

    @staticmethod
    def _sign(key: Any, version: int, mac: MacAddress) -> str:
        mac_state = key.copy()
        mac_state.update(_message(version, mac))
        return _b64(mac_state.digest())

    def verify(self, mac: MacAddress, token: str) -> int:
        """The key version of ``token`` if it is ``mac``'s token, else `InvalidDeviceTokenError`.

        The comparison is `hmac.compare_digest` over the whole token, so timing reveals nothing
        about how much of a guess was right. The message never contains the token.
        """
        prefix, dot, _ = token.partition(".")
        found = self._prefixes.get(prefix) if dot else None
        if found is None:
            malformed = _TOKEN.fullmatch(token) is None
            raise InvalidDeviceTokenError(
                "malformed device token" if malformed else "unknown device key version",
                mac_address=str(mac),
                reason="malformed" if malformed else "unknown_version",
            )
        version, key = found
        cache_key = (version, mac.value)
        expected = self._expected.get(cache_key)
        cached = expected is not None
        if expected is None:
            expected = f"v{version}.{self._sign(key, version, mac)}".encode()
        if not hmac.compare_digest(expected, token.encode()):
            raise InvalidDeviceTokenError(
                "device token is not valid for this MAC", mac_address=str(mac), reason="mismatch"
            )
        if not cached:  # only tokens proven genuine: invented MACs cannot grow the cache
            if len(self._expected) >= _EXPECTED_CACHE_SIZE:
                self._expected.clear()
            self._expected[cache_key] = expected
        return version


def parse_keyring(text: str, *, source: str = "<secrets>") -> DeviceKeyring:
    """A keyring from lines ``v<N>:<secret>``; blank lines and ``#`` comments are ignored.

    Errors name the source and line, never the secret.
    """
    secrets: dict[int, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SECRET_LINE.fullmatch(line)
        if match is None:
            raise DeviceSecretError(
                f"{source}, line {number}: expected 'v<N>:<secret>' (ASCII)",
                path=source,
                line=number,
            )
        version = int(match.group(1))
        if version in secrets:
            raise DeviceSecretError(
                f"{source}, line {number}: secret version v{version} appears twice",
                path=source,
                line=number,
            )
        secrets[version] = match.group(2).strip().encode()
    if not secrets:
        raise DeviceSecretError(f"{source}: no secret versions", path=source)
    try:
        return DeviceKeyring(secrets)
    except DeviceSecretError as exc:
        raise DeviceSecretError(f"{source}: {exc.message}", path=source, **exc.details) from None


def load_keyring(path: str) -> DeviceKeyring:
    """The keyring in the file at ``path``; `DeviceSecretError` when it is unusable.

    A file that group or others may read is accepted with a warning (Kubernetes mounts secrets
    0644 unless told otherwise): whoever reads the secret reads every device's config.
    """
    try:
        with open(path, encoding="ascii") as file:
            mode = os.fstat(file.fileno()).st_mode
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceSecretError(f"cannot read device secret file {path}: {exc}", path=path) from exc
    if mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH):
        log.warning(
            "device secret file %s is readable by group or others (mode %o): chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return parse_keyring(text, source=path)


def new_secret_line(version: int) -> str:
    """A fresh random secret as a secret-file line (256 bits, URL-safe text)."""
    return f"v{version}:{base64.urlsafe_b64encode(os.urandom(32)).rstrip(b'=').decode()}"


# -- revocation ---------------------------------------------------------------------------------


@attrs.frozen
class Revocation:
    """Tokens of ``mac`` with key version up to ``through_version`` are refused."""

    mac_address: MacAddress
    through_version: int
    revoked_at: str


def _decode_revocations(data: bytes) -> dict[MacAddress, Revocation]:
    try:
        document = json.loads(data)
        entries = document["revoked"]
        return {
            (mac := MacAddress.parse(key)): Revocation(
                mac, int(value["through_version"]), str(value["revoked_at"])
            )
            for key, value in entries.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise StoreUnavailableError(
            f"device revocation list {REVOCATIONS_NAME} is not valid: {exc}", reason="corrupt"
        ) from exc


def _encode_revocations(entries: Mapping[MacAddress, Revocation]) -> bytes:
    revoked = {
        str(mac): {"through_version": entry.through_version, "revoked_at": entry.revoked_at}
        for mac, entry in sorted(entries.items())
    }
    return (json.dumps({"format": 1, "revoked": revoked}, indent=2) + "\n").encode()


class RevocationList:
    """The revoked device tokens, kept in the store so every replica sees the same list.

    Reads are cached and revalidated by the backend's version token (a stat on disk) at most
    once per ``refresh_seconds``, so a device poll costs a clock read; a revocation made by
    another process is seen within that interval. Updates are compare-and-swap against the
    version just read, retried when another writer got in between: no revocation is lost.
    An unreadable or corrupt list is an outage (`StoreUnavailableError`), never "nothing revoked".
    """

    def __init__(
        self,
        backend: Backend,
        *,
        refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._refresh = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._token: Hashable | None = None
        self._entries: dict[MacAddress, Revocation] = {}
        self._checked = -float("inf")

    def _guarded(self, action: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` with backend failures as `StoreUnavailableError` (as the store does)."""
        try:
            return call(*args)
        except (ConfigError, VersionConflict):
            raise
        except Exception as exc:
            raise StoreUnavailableError(
                f"store {self._backend.description} unavailable during {action}: {exc}",
                action=action,
                backend=self._backend.description,
            ) from exc

    def _current(self) -> dict[MacAddress, Revocation]:
        now = self._clock()
        if now - self._checked < self._refresh:
            return self._entries
        with self._lock:
            if now - self._checked < self._refresh:
                return self._entries
            token = self._guarded("read revocations", self._backend.version, REVOCATIONS_NAME)
            if token != self._token:
                self._load()
            self._checked = now
            return self._entries

    def _load(self) -> Hashable | Absent:
        """Read the list into the cache (caller holds the lock); the version read, or ABSENT."""
        blob = self._guarded(
            "read revocations", self._backend.read, REVOCATIONS_NAME, _MAX_REVOCATIONS_BYTES
        )
        if blob is None:
            self._token, self._entries = None, {}
            return ABSENT
        self._entries = _decode_revocations(blob.data)
        self._token = blob.entry.token
        return blob.entry.token

    def is_revoked(self, mac: MacAddress, version: int) -> bool:
        """Whether ``mac``'s token of key ``version`` is revoked."""
        entries = self._current()
        if not entries:
            return False
        entry = entries.get(mac)
        return entry is not None and version <= entry.through_version

    def entries(self) -> list[Revocation]:
        """Every revocation, fresh from the store, sorted by MAC."""
        with self._lock:
            self._load()
            self._checked = self._clock()
            return sorted(self._entries.values(), key=lambda entry: entry.mac_address)

    def revoke(self, mac: MacAddress, through_version: int) -> Revocation:
        """Refuse ``mac``'s tokens of key versions up to ``through_version`` on every replica."""
        entry = Revocation(mac, through_version, datetime.now(UTC).isoformat(timespec="seconds"))

        def change(entries: dict[MacAddress, Revocation]) -> bool:
            entries[mac] = entry
            return True

        self._update(change)
        return entry

    def unrevoke(self, mac: MacAddress) -> bool:
        """Accept ``mac``'s tokens again; ``False`` when it was not revoked."""
        return self._update(lambda entries: entries.pop(mac, None) is not None)

    def _update(self, change: Callable[[dict[MacAddress, Revocation]], bool]) -> bool:
        with self._lock:
            for _ in range(_MAX_WRITE_ATTEMPTS):
                expected = self._load()
                entries = dict(self._entries)
                if not change(entries):
                    return False
                data = _encode_revocations(entries)
                try:
                    self._guarded(
                        "update revocations",
                        self._backend.replace,
                        REVOCATIONS_NAME,
                        data,
                        expected,
                    )
                except VersionConflict:
                    continue
                self._checked = -float("inf")  # re-read on next use, with the new token
                return True
        raise StoreUnavailableError(
            f"revocation update lost {_MAX_WRITE_ATTEMPTS} races with other writers in a row",
            action="update revocations",
        )
