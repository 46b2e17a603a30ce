"""The typed errors of the core library.

Every error carries a stable machine ``code`` (part of the public API: scripts and the HTTP layer
switch on it) and a ``details`` mapping with the facts a caller needs to act on it. Messages are for
humans and may change; codes do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "AlreadyExistsError",
    "ConfigError",
    "CorruptDocumentError",
    "DocumentTooLargeError",
    "ErrorCode",
    "InvalidDocumentError",
    "InvalidETagError",
    "InvalidMacError",
    "InvalidPatchError",
    "InvalidQueryError",
    "InvalidSchemaError",
    "NotFoundError",
    "PatchConflictError",
    "PreconditionFailedError",
    "SchemaViolationError",
    "StoreMissingError",
    "StoreUnavailableError",
    "StoredDocumentTooLargeError",
    "UnsupportedStoreError",
    "VersionNotFoundError",
]


class ErrorCode(StrEnum):
    """The stable machine codes of the core's errors, one per exception class below."""

    CONFIG_ERROR = "CONFIG_ERROR"
    INVALID_MAC = "INVALID_MAC"
    INVALID_DOCUMENT = "INVALID_DOCUMENT"
    DOCUMENT_TOO_LARGE = "DOCUMENT_TOO_LARGE"
    INVALID_ETAG = "INVALID_ETAG"
    INVALID_QUERY = "INVALID_QUERY"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PRECONDITION_FAILED = "PRECONDITION_FAILED"
    CORRUPT_DOCUMENT = "CORRUPT_DOCUMENT"
    STORED_DOCUMENT_TOO_LARGE = "STORED_DOCUMENT_TOO_LARGE"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    UNSUPPORTED_STORE = "UNSUPPORTED_STORE"
    INVALID_DEVICE_TOKEN = "INVALID_DEVICE_TOKEN"  # noqa: S105 -- a code, not a password
    INVALID_DEVICE_SECRET = "INVALID_DEVICE_SECRET"  # noqa: S105 -- a code, not a password
    INVALID_PATCH = "INVALID_PATCH"
    PATCH_CONFLICT = "PATCH_CONFLICT"
    INVALID_SCHEMA = "INVALID_SCHEMA"
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"


class ConfigError(Exception):
    """Base of every error the core raises on purpose."""

    code: ClassVar[ErrorCode] = ErrorCode.CONFIG_ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: Mapping[str, Any] = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class InvalidMacError(ConfigError, ValueError):
    """Text that is not a MAC address in any accepted spelling."""

    code = ErrorCode.INVALID_MAC


class InvalidDocumentError(ConfigError, ValueError):
    """Bytes or content that are not an acceptable config document.

    ``details["reason"]`` names the rule that was broken (for example ``"duplicate_key"``), and
    ``line``/``column`` are present when the problem has a position in the text.
    """

    code = ErrorCode.INVALID_DOCUMENT


class DocumentTooLargeError(InvalidDocumentError):
    """A document over the configured size limit (``details``: ``size``, ``limit``)."""

    code = ErrorCode.DOCUMENT_TOO_LARGE


class InvalidETagError(ConfigError, ValueError):
    """A precondition value that is not an entity tag, a list of them, or ``*``."""

    code = ErrorCode.INVALID_ETAG


class InvalidQueryError(ConfigError, ValueError):
    """A listing query that cannot be answered: a bad cursor, limit or filter (``parameter``)."""

    code = ErrorCode.INVALID_QUERY


class NotFoundError(ConfigError, LookupError):
    """No config is stored for this MAC."""

    code = ErrorCode.NOT_FOUND


class AlreadyExistsError(ConfigError):
    """A create-only write found a config already stored (``details["current_etag"]``)."""

    code = ErrorCode.ALREADY_EXISTS

    @property
    def current_etag(self) -> str:
        """The ETag of the config that is already stored."""
        return str(self.details["current_etag"])


class PreconditionFailedError(ConfigError):
    """``if_match``/``if_none_match`` did not hold against the stored version.

    ``details["current_etag"]`` is the stored ETag, or ``None`` when nothing is stored, so a client
    can re-read and retry without another round trip to learn it.
    """

    code = ErrorCode.PRECONDITION_FAILED

    @property
    def current_etag(self) -> str | None:
        """The ETag now stored, or ``None`` when nothing is."""
        value = self.details.get("current_etag")
        return None if value is None else str(value)


class CorruptDocumentError(ConfigError):
    """A stored file that no longer parses (typically edited badly by hand).

    It is reported, never served; overwriting it with a valid document repairs it.
    """

    code = ErrorCode.CORRUPT_DOCUMENT


class StoreUnavailableError(ConfigError):
    """The storage backend failed (I/O error, vanished root, unreachable server).

    The original exception is chained as ``__cause__``; the store never leaks a bare ``OSError``.
    """

    code = ErrorCode.STORE_UNAVAILABLE


class UnsupportedStoreError(ConfigError, ValueError):
    """A store URL whose backend cannot give the store's guarantees (atomic, conditional writes)."""

    code = ErrorCode.UNSUPPORTED_STORE


class StoreMissingError(StoreUnavailableError):
    """The store's root (directory, bucket) does not exist (``details``: ``store``).

    An outage rather than an empty fleet, with the same code as `StoreUnavailableError`. Its
    message names the store and the command-line way to create it (``--create-store``), so the
    CLI and the server print it as it is; in code, `ConfigStore.create_root` creates it.
    """


class StoredDocumentTooLargeError(CorruptDocumentError):
    """A stored file over the configured size limit (``details``: ``size``, ``limit``).

    Not a client's upload (that is `DocumentTooLargeError`): the file was put there by hand or
    under a larger limit. It is reported, never served; overwriting it repairs it.
    """

    code = ErrorCode.STORED_DOCUMENT_TOO_LARGE


class InvalidPatchError(ConfigError, ValueError):
    """A patch document that is not a merge patch or JSON Patch (``details["reason"]``)."""

    code = ErrorCode.INVALID_PATCH


class PatchConflictError(ConfigError):
    """A well-formed JSON Patch that does not apply to the stored config.

    A ``test`` operation failed, or a path names something that is not there; nothing was written.
    """

    code = ErrorCode.PATCH_CONFLICT


class InvalidSchemaError(ConfigError, ValueError):
    """A schema name or document the store does not accept (not valid against its meta-schema)."""

    code = ErrorCode.INVALID_SCHEMA


class SchemaViolationError(InvalidDocumentError):
    """Content that its JSON Schema rejects; nothing was written.

    ``details``: ``schema`` (the schema's name) and ``problems``, a list of ``{"pointer",
    "message"}`` (the RFC 6901 pointer into the content and what is wrong there).
    """

    code = ErrorCode.SCHEMA_VIOLATION


class VersionNotFoundError(NotFoundError):
    """No version with this ETag in the device's history (``details``: ``mac_address``, ``etag``).

    Also what rolling back or undeleting finds when there is nothing in the history to restore.
    """

    code = ErrorCode.VERSION_NOT_FOUND
