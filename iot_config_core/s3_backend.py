"""Amazon S3 and S3-compatible object stores (SeaweedFS, Ceph radosgw, moto) through s3fs.

An S3 PUT is atomic (readers see the old object or the new one), so a write is one PUT, and
compare-and-swap is the server's own conditional write: ``If-Match: <etag>`` to replace a known
version, ``If-None-Match: *`` to create. The version token is the object's ETag, which every LIST
returns, so a listing is one paginated request with no per-object HEAD.

Every request goes straight to the S3 API through s3fs's client (``call_s3``), never through
fsspec's ``ls``/``info``: those answer from s3fs's directory cache, which would hide other writers.

Servers differ in how they refuse a condition (412, 409 under contention, moto's 404 for
``If-Match`` on a missing key, s3fs's ``FileExistsError`` or ``OSError(EINVAL)``); all of that is
turned into `VersionConflict` here, at one boundary. A server that *ignores* a condition (radosgw
16 ignores ``If-Match`` on DELETE) would silently turn compare-and-swap into last-write-wins, so
the first write probes what the server honours and refuses what it cannot do safely.

Hidden objects (version history) are keys under ``<prefix>/.history/``: the listing asks with a
``/`` delimiter and skips dot-names, so they never appear as configs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar, cast

import attrs
from fsspec.asyn import sync

from .backend import ABSENT, ANY, Absent, AnyVersion, Backend, Blob, Entry, VersionConflict
from .document import compute_etag
from .errors import UnsupportedStoreError

__all__ = ["S3Backend", "S3Capabilities"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A condition the server refused: 412 Precondition Failed, or AWS's 409 when two conditional
# writes to one key race.
_CONFLICT_STATUSES = frozenset({409, 412})
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
# A version no object has: what the probe sends to see whether a condition is honoured.
_IMPOSSIBLE_ETAG = "0" * 32


def _unquote(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def _response_of(exc: BaseException) -> dict[str, Any]:
    """The botocore response behind an s3fs-translated error (``{}`` for non-HTTP errors)."""
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return response
    return {}


def _status_and_code(exc: BaseException) -> tuple[int | None, str | None]:
    response = _response_of(exc)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    return (status if isinstance(status, int) else None), (code if isinstance(code, str) else None)


def _is_missing_key(exc: BaseException) -> bool:
    status, code = _status_and_code(exc)
    if code in _MISSING_BUCKET_CODES:
        return False  # a vanished bucket is an outage, never "this config is absent"
    return code in _MISSING_KEY_CODES or (status == 404 and code is None)


def _is_conflict(exc: BaseException, *, creating: bool) -> bool:
    if isinstance(exc, FileExistsError):  # s3fs's name for a 412 that names If-None-Match
        return True
    status, code = _status_and_code(exc)
    if status in _CONFLICT_STATUSES or code in _CONFLICT_CODES:
        return True
    # moto answers If-Match on a missing key with 404 where S3 says 412: the version is gone
    return not creating and _is_missing_key(exc)


def _server_time(response: dict[str, Any]) -> datetime | None:
    """The server's clock when it answered (a PUT response carries no Last-Modified)."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if isinstance(date, str) else None
    except (TypeError, ValueError):
        return None


def _total_size(response: dict[str, Any]) -> int:
    """The whole object's size, also when only a range of it was fetched."""
    content_range = response.get("ContentRange")
    if isinstance(content_range, str) and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return int(response.get("ContentLength", 0))


async def _read_body(response: dict[str, Any]) -> bytes:
    """The whole body of a GetObject answer, its stream closed."""
    body = response["Body"]
    try:
        return bytes(await body.read())
    finally:
        body.close()


@attrs.frozen
class S3Capabilities:
    """Which conditions the server really enforces (probed once, before the first write)."""

    conditional_put: bool
    conditional_delete: bool


class S3Backend(Backend):
    """Configs as objects ``<prefix>/<mac>.json`` in one bucket of an S3-speaking server.

    ``page_size`` is the number of keys per LIST request (S3's maximum, 1000, unless testing).
    """

    def __init__(self, fs: Any, root: str, *, page_size: int = 1000) -> None:
        self._fs = fs
        self._page_size = page_size
        bucket, _, prefix = root.strip("/").partition("/")
        if not bucket:
            raise UnsupportedStoreError("an s3:// store URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._capabilities: S3Capabilities | None = None
        self._probe_lock = threading.Lock()
        # Whether this server's ETags are MD5s of the bytes (learnt from our own writes).
        self._md5_etags: bool | None = None
        # Whether the server takes DeleteObjects (learnt from the first batch removed).
        self._bulk_delete: bool | None = None

    @property
    def description(self) -> str:
        endpoint = getattr(self._fs, "client_kwargs", {}).get("endpoint_url")
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {endpoint}" if endpoint else where

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one of our coroutines on s3fs's event loop thread (safe from any thread)."""
        return sync(self._fs.loop, func, *args)  # type: ignore[no-any-return]

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._fs._call_s3(method, Bucket=self.bucket, **kwargs)  # noqa: SLF001
        assert isinstance(response, dict)
        return response

    def _key(self, name: str) -> str:
        return self.prefix + name

    @staticmethod
    def _entry(etag: str, modified: datetime | None) -> Entry:
        return Entry(_unquote(etag), None if modified is None else modified.astimezone(UTC))

    def _learn_etags(self, server_etag: str, data: bytes) -> None:
        if self._md5_etags is None:
            self._md5_etags = _unquote(server_etag) == compute_etag(data)

    # -- reads ----------------------------------------------------------------------------------

    def scan(self) -> list[tuple[str, Hashable]]:
        return self._run(self._scan)

    async def _scan(self) -> list[tuple[str, Hashable]]:
        entries: list[tuple[str, Hashable]] = []
        for item in await self._list(self.prefix):
            name = item["Key"][len(self.prefix) :]
            if name and not name.startswith("."):
                entries.append((name, _unquote(item["ETag"])))  # the token `_entry` makes
        return entries

    async def _list(self, prefix: str) -> list[dict[str, Any]]:
        """Every object directly under ``prefix`` (one LIST request per page, no cache)."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Prefix": prefix, "Delimiter": "/", "MaxKeys": self._page_size}
        while True:
            page = await self._call("list_objects_v2", **kwargs)
            items.extend(page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return items
            kwargs["ContinuationToken"] = token

    def stat(self, name: str) -> Entry | None:
        return self._run(self._stat, name)

    def scan_hidden(self, prefix: str) -> list[str]:
        return self._run(self._scan_hidden, prefix)

    async def _scan_hidden(self, prefix: str) -> list[str]:
        names: list[str] = []
        kwargs: dict[str, Any] = {"Prefix": self.prefix + prefix, "Delimiter": "/"}
        while True:
            page = await self._call("list_objects_v2", **kwargs)
            names.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return names
            kwargs["ContinuationToken"] = token

    async def _stat(self, name: str) -> Entry | None:
        try:
            head = await self._call("head_object", Key=self._key(name))
        except OSError as exc:
            if _is_missing_key(exc):
                return None
            raise
        return self._entry(head["ETag"], head.get("LastModified"))

    def read(self, name: str, limit: int) -> Blob | None:
        return self._run(self._read, name, limit)

    async def _read(self, name: str, limit: int) -> Blob | None:
        key = self._key(name)
        try:
            response = await self._call("get_object", Key=key, Range=f"bytes=0-{limit}")
        except OSError as exc:
            if _is_missing_key(exc):
                return None
            if _status_and_code(exc)[0] != 416:
                raise
            # an empty object has no byte 0 to range over (hand-made, so invalid, but reported)
            try:
                response = await self._call("get_object", Key=key)
            except OSError as exc2:
                if _is_missing_key(exc2):
                    return None
                raise
        data = await _read_body(response)
        size = _total_size(response)
        if size == len(data):
            self._learn_etags(response["ETag"], data)
        return Blob(data, self._entry(response["ETag"], response.get("LastModified")), size)

    # -- conditional writes ---------------------------------------------------------------------

    def capabilities(self) -> S3Capabilities:
        """What the server enforces; probed with a hidden object once per backend."""
        with self._probe_lock:
            if self._capabilities is None:
                self._capabilities = self._run(self._probe_capabilities)
                if not self._capabilities.conditional_delete:
                    log.warning(
                        "%s ignores If-Match on DELETE: deleting configs is refused",
                        self.description,
                    )
            return self._capabilities

    async def _probe_capabilities(self) -> S3Capabilities:
        key = self._key(f".iot-config-probe-{secrets.token_hex(8)}")
        created = await self._call("put_object", Key=key, Body=b"probe\n", IfNoneMatch="*")
        try:
            conditional_put = await self._refused(
                "put_object", Key=key, Body=b"x\n", IfNoneMatch="*"
            ) and await self._refused("put_object", Key=key, Body=b"x\n", IfMatch=_IMPOSSIBLE_ETAG)
            conditional_delete = await self._refused(
                "delete_object", Key=key, IfMatch=_IMPOSSIBLE_ETAG
            )
        finally:
            await self._call("delete_object", Key=key)
        log.debug("probed %s (probe ETag %s)", self.description, created.get("ETag"))
        return S3Capabilities(conditional_put, conditional_delete)

    async def _refused(self, method: str, **kwargs: Any) -> bool:
        """Whether the server refuses a request whose condition cannot hold, as it must."""
        try:
            await self._call(method, **kwargs)
        except OSError as exc:
            if _is_conflict(exc, creating=False):
                return True
            status, code = _status_and_code(exc)
            if status is None:
                raise  # the network, not the server's answer: do not decide anything on it
            log.warning(
                "%s rejects a conditional %s: %s %s", self.description, method, status, code
            )
            return False
        return False

    @property
    def etags_are_tokens(self) -> bool:
        # Known once a read or write of ours compared a server ETag with the MD5 of the bytes.
        return self._md5_etags is True

    def replace(self, name: str, data: bytes, expected: Hashable | Absent | AnyVersion) -> Entry:
        self._require_conditional_put()
        return self._run(self._replace, name, bytes(data), expected)

    def _require_conditional_put(self) -> None:
        if not self.capabilities().conditional_put:
            raise UnsupportedStoreError(
                f"{self.description} does not enforce If-Match/If-None-Match on PUT, so writes "
                "could silently overwrite each other; refusing to write",
                backend=self.description,
            )

    def record_and_replace(
        self,
        records: Sequence[tuple[str, bytes]],
        name: str,
        data: bytes,
        expected: Hashable | Absent | AnyVersion,
    ) -> Entry:
        # The records go alongside the swap, not before it: one round trip instead of two.
        self._require_conditional_put()
        swap = self._replace(name, bytes(data), expected)
        entry: Entry = self._run(self._alongside, records, swap)
        return entry

    def record_and_remove(
        self, records: Sequence[tuple[str, bytes]], name: str, expected: Hashable
    ) -> None:
        self._require_conditional_delete()
        self._run(self._alongside, records, self._remove(name, expected))

    async def _alongside(self, records: Sequence[tuple[str, bytes]], swap: Awaitable[T]) -> T:
        """Await ``swap`` and the PUTs of ``records`` together; raise if any of them failed.

        The swap's own failure (a `VersionConflict` above all) wins: the store then removes
        records that did land. A record that failed beside a swap that succeeded leaves the new
        version unrecorded (shown as ``external``), and the write is not acknowledged.
        """
        puts = [self._put_hidden(path, bytes(raw)) for path, raw in records]
        swapped, *recorded = await asyncio.gather(swap, *puts, return_exceptions=True)
        for outcome in (swapped, *recorded):
            if isinstance(outcome, BaseException):
                raise outcome
        return cast("T", swapped)

    def read_and_list_hidden(
        self, name: str, limit: int, directory: str
    ) -> tuple[Blob | None, list[str]]:
        return self._run(self._read_and_list, name, limit, directory)

    async def _read_and_list(
        self, name: str, limit: int, directory: str
    ) -> tuple[Blob | None, list[str]]:
        return await asyncio.gather(self._read(name, limit), self._list_hidden(directory))

    async def _replace(
        self, name: str, data: bytes, expected: Hashable | Absent | AnyVersion
    ) -> Entry:
        creating = expected is ABSENT
        condition: dict[str, str] = {}
        if creating:
            condition["IfNoneMatch"] = "*"
        elif expected is not ANY:
            condition["IfMatch"] = str(expected)
        try:
            response = await self._call(
                "put_object",
                Key=self._key(name),
                Body=data,
                ContentType="application/json",
                **condition,
            )
        except OSError as exc:
            if _is_conflict(exc, creating=creating):
                raise VersionConflict(name) from exc
            raise
        self._learn_etags(response["ETag"], data)
        return self._entry(response["ETag"], _server_time(response))

    def remove(self, name: str, expected: Hashable) -> None:
        self._require_conditional_delete()
        self._run(self._remove, name, expected)

    def _require_conditional_delete(self) -> None:
        if not self.capabilities().conditional_delete:
            raise UnsupportedStoreError(
                f"{self.description} ignores If-Match on DELETE, so a delete could remove a "
                "config someone else just wrote; refusing to delete",
                backend=self.description,
            )

    async def _remove(self, name: str, expected: Hashable) -> None:
        try:
            await self._call("delete_object", Key=self._key(name), IfMatch=str(expected))
        except OSError as exc:
            if _is_conflict(exc, creating=False):
                raise VersionConflict(name) from exc
            raise

    # -- the root -------------------------------------------------------------------------------

    def root_exists(self) -> bool:
        return self._run(self._bucket_exists)

    async def _bucket_exists(self) -> bool:
        try:
            await self._call("head_bucket")
        except OSError as exc:
            status, code = _status_and_code(exc)
            if status == 404 or code in _MISSING_BUCKET_CODES:
                return False
            raise
        return True

    def create_root(self) -> None:
        self._run(self._create_bucket)

    async def _create_bucket(self) -> None:
        if await self._bucket_exists():
            return
        await self._fs.set_session()
        client = await self._fs.get_s3()
        region = client.meta.region_name
        # us-east-1 (and servers with no regions) reject an explicit LocationConstraint
        params: dict[str, Any] = {}
        if region and region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with contextlib.suppress(FileExistsError):  # created by someone else since we looked
            await self._call("create_bucket", **params)

    def probe(self) -> None:
        self._run(self._probe)

    async def _probe(self) -> None:
        await self._call("list_objects_v2", Prefix=self.prefix, Delimiter="/", MaxKeys=1)
        key = self._key(f".health-{secrets.token_hex(8)}")
        await self._call("put_object", Key=key, Body=b"ok\n")
        await self._call("delete_object", Key=key)

    # -- hidden objects -------------------------------------------------------------------------

    def put_hidden(self, path: str, data: bytes) -> None:
        self._run(self._put_hidden, path, bytes(data))

    async def _put_hidden(self, path: str, data: bytes) -> None:
        # An S3 PUT is durable once answered; the name is fresh, so no condition is needed.
        await self._call("put_object", Key=self._key(path), Body=data)

    def list_hidden(self, directory: str) -> list[str]:
        return self._run(self._list_hidden, directory)

    async def _list_hidden(self, directory: str) -> list[str]:
        prefix = self._key(directory) + "/"
        return [item["Key"][len(prefix) :] for item in await self._list(prefix)]

    def read_hidden(self, path: str) -> bytes | None:
        return self._run(self._read_hidden, path)

    async def _read_hidden(self, path: str) -> bytes | None:
        try:
            response = await self._call("get_object", Key=self._key(path))
        except OSError as exc:
            if _is_missing_key(exc):
                return None
            raise
        return await _read_body(response)

    def remove_hidden(self, paths: Sequence[str]) -> None:
        self._run(self._remove_hidden, list(paths))

    async def _remove_hidden(self, paths: list[str]) -> None:
        # One DeleteObjects request for a batch; a server that refuses it (its Content-MD5 or
        # checksum rules differ) gets one DELETE per key from then on, concurrently.
        if len(paths) > 1 and self._bulk_delete is not False:
            objects = [{"Key": self._key(p)} for p in paths]
            try:
                response = await self._call(
                    "delete_objects", Delete={"Objects": objects, "Quiet": True}
                )
            except OSError as exc:
                status, code = _status_and_code(exc)
                if status is None:
                    raise
                log.info("%s refuses DeleteObjects (%s %s)", self.description, status, code)
                self._bulk_delete = False
            else:
                self._bulk_delete = True
                failed = {e.get("Key") for e in response.get("Errors", [])}
                paths = [p for p in paths if self._key(p) in failed]
        await asyncio.gather(*(self._call("delete_object", Key=self._key(p)) for p in paths))
