"""The store contract over S3, against real S3-speaking server processes (moto, SeaweedFS).

Each server runs once per module on 127.0.0.1; every store gets its own prefix in one bucket.
The raw hooks use boto3 directly, so "behind the store's back" is another S3 client, as it would be
for a human with the AWS CLI.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, cast

import boto3
import pytest
from hypothesis import settings
from s3_server import (
    ACCESS_KEY,
    SECRET_KEY,
    S3Server,
    moto_server,
    seaweedfs_server,
    storage_options,
)
from support import free_port

from iot_config_core import ConfigStore, open_store
from iot_config_core.backend import ABSENT, VersionConflict
from iot_config_core.document import compute_etag, encode_document
from iot_config_core.errors import (
    AlreadyExistsError,
    CorruptDocumentError,
    PreconditionFailedError,
    StoreUnavailableError,
    UnsupportedStoreError,
)
from iot_config_core.mac import MacAddress
from iot_config_core.s3_backend import S3Backend, S3Capabilities
from iot_config_core.testing import MAC_A, MAC_B, StoreContract, cas_increment
from iot_config_core.testing.contract import with_history_limit

BUCKET = "iot-config-tests"


def backend_of(store: ConfigStore) -> S3Backend:
    return cast("S3Backend", store._backend)


def url_of(store: ConfigStore) -> str:
    backend = backend_of(store)
    return f"s3://{backend.bucket}/{backend.prefix}"


def boto_client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Server]:
    with moto_server() as server:
        boto_client(server).create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def seaweedfs() -> Iterator[S3Server]:
    with seaweedfs_server() as server:
        boto_client(server).create_bucket(Bucket=BUCKET)
        yield server


class S3Contract(StoreContract):
    """The contract plus S3-specific checks, on whichever server ``server_fixture`` names."""

    server_fixture: ClassVar[str]
    # every step is a few HTTP requests: fewer examples than on disk, same steps
    stateful_settings = settings(StoreContract.stateful_settings, max_examples=12)

    @pytest.fixture(autouse=True)
    def _server(self, request: pytest.FixtureRequest) -> None:
        self.server: S3Server = request.getfixturevalue(self.server_fixture)
        self.client = boto_client(self.server)

    def open(self, url: str, **extra: Any) -> ConfigStore:
        return open_store(url, **{**storage_options(self.server), **extra})

    def make_store(self) -> ConfigStore:
        return self.open(f"s3://{BUCKET}/{uuid.uuid4().hex}", create=True)

    def make_missing_store(self) -> ConfigStore:
        return self.open(f"s3://missing-{uuid.uuid4().hex[:16]}/fleet")

    def make_second_client(self, store: ConfigStore) -> ConfigStore:
        return self.open(url_of(store), skip_instance_cache=True)

    def write_raw(self, store: ConfigStore, name: str, data: bytes) -> None:
        backend = backend_of(store)
        self.client.put_object(Bucket=backend.bucket, Key=backend.prefix + name, Body=data)

    def remove_raw(self, store: ConfigStore, name: str) -> None:
        backend = backend_of(store)
        self.client.delete_object(Bucket=backend.bucket, Key=backend.prefix + name)

    def list_raw(self, store: ConfigStore) -> list[str]:
        backend = backend_of(store)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=backend.bucket, Prefix=backend.prefix, Delimiter="/"
        )
        names = [o["Key"][len(backend.prefix) :] for p in pages for o in p.get("Contents", [])]
        return [n for n in names if n]  # SeaweedFS shows an emptied "folder" as key "<prefix>/"

    # -- S3 specifics -----------------------------------------------------------------------------

    def test_server_enforces_both_conditions(self, store: ConfigStore) -> None:
        backend = backend_of(store)
        assert backend.capabilities() == S3Capabilities(
            conditional_put=True, conditional_delete=True
        )
        assert self.list_raw(store) == []  # the probe object is gone

    def test_racing_creators_have_one_winner(self, store: ConfigStore) -> None:
        backends = [backend_of(store), backend_of(self.make_second_client(store))]
        outcomes: list[object] = [None] * 16
        barrier = threading.Barrier(16)

        def create(i: int) -> None:
            barrier.wait()
            try:
                outcomes[i] = backends[i % 2].replace("x.json", b"%d" % i, ABSENT)
            except VersionConflict as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        winners = [i for i, o in enumerate(outcomes) if not isinstance(o, VersionConflict)]
        assert len(winners) == 1, outcomes
        assert (
            self.client.get_object(Bucket=BUCKET, Key=backend_of(store).prefix + "x.json")[
                "Body"
            ].read()
            == b"%d" % winners[0]
        )

    def test_stale_or_vanished_version_is_a_conflict(self, store: ConfigStore) -> None:
        backend = backend_of(store)
        first = backend.replace("x.json", b"1", ABSENT)
        second = backend.replace("x.json", b"2", first.token)
        with pytest.raises(VersionConflict):
            backend.replace("x.json", b"3", first.token)
        with pytest.raises(VersionConflict):
            backend.remove("x.json", first.token)
        with pytest.raises(VersionConflict):
            backend.replace("x.json", b"3", ABSENT)
        backend.remove("x.json", second.token)
        with pytest.raises(VersionConflict):  # moto says 404 here, the others 412
            backend.replace("x.json", b"4", second.token)
        with pytest.raises(VersionConflict):
            backend.remove("x.json", second.token)
        assert self.list_raw(store) == []

    def test_version_token_is_the_etag_from_list_head_and_get(self, store: ConfigStore) -> None:
        stored = store.put(MAC_A, {"deviceName": "a"})
        backend = backend_of(store)
        ((listed_name, listed_token),) = backend.scan()
        head = backend.stat(MAC_A.file_name)
        blob = backend.read(MAC_A.file_name, 1000)
        assert head is not None
        assert blob is not None
        assert listed_name == MAC_A.file_name
        assert listed_token == head.token == blob.entry.token == stored.etag
        assert blob.size == stored.size
        assert head.modified is not None
        assert stored.modified is not None
        assert abs((head.modified - stored.modified).total_seconds()) < 5

    def test_read_limit_reports_whole_size(self, store: ConfigStore) -> None:
        self.write_raw(store, "big.json", b"x" * 5000)
        blob = backend_of(store).read("big.json", 99)
        assert blob is not None
        assert blob.data == b"x" * 100
        assert blob.size == 5000

    def test_empty_object_is_corrupt_not_an_outage(self, store: ConfigStore) -> None:
        self.write_raw(store, MAC_A.file_name, b"")
        with pytest.raises(CorruptDocumentError):
            store.get(MAC_A)
        assert store.list() == []
        assert store.listing().skipped == (MAC_A.file_name,)

    def test_s3fs_listing_cache_never_hides_other_writers(self) -> None:
        # s3fs defaults: a cached filesystem instance with a directory-listing cache
        url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
        opts: dict[str, Any] = {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"endpoint_url": self.server.endpoint},
        }
        first = open_store(url, **opts)
        second = open_store(url, **opts)
        second.put(MAC_A, {"n": 1})
        assert [s.mac_address for s in first.list()] == [MAC_A]
        fs = backend_of(first)._fs
        # s3fs has now cached this listing (the config and the hidden .history/ prefix)
        assert len(fs.ls(url)) == 2
        self.write_raw(first, MAC_B.file_name, b'{"n": 2}')
        assert [s.mac_address for s in first.list()] == [MAC_B, MAC_A]
        self.remove_raw(first, MAC_A.file_name)
        second.put(MAC_B, {"n": 3})
        assert [(s.mac_address, s.etag) for s in first.list()] == [
            (MAC_B, compute_etag(encode_document({"n": 3})))
        ]
        assert not first.exists(MAC_A)
        assert len(fs.ls(url)) == 2  # while s3fs's own ls still answers from its cache

    def test_nested_keys_and_hidden_objects_are_not_configs(self, store: ConfigStore) -> None:
        store.put(MAC_A, {"n": 1})
        self.write_raw(store, "sub/" + MAC_B.file_name, b'{"n": 2}')
        self.write_raw(store, ".hidden.json", b"{}")
        assert [s.mac_address for s in store.list()] == [MAC_A]
        assert store.listing().skipped == ()

    def test_a_write_after_its_own_sends_only_its_record_and_config(
        self, store: ConfigStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = with_history_limit(store, 8)
        store.put(MAC_A, {"n": 0})  # the first write reads and lists
        fs = backend_of(store)._fs
        sent: list[str] = []
        send = fs._call_s3

        async def counted(method: str, *args: Any, **kwargs: Any) -> Any:
            sent.append(method)
            return await send(method, *args, **kwargs)

        monkeypatch.setattr(fs, "_call_s3", counted)
        etags = [store.put(MAC_A, {"n": n}).etag for n in range(1, 4)]
        assert [m for m in sent if m != "head_object"] == ["put_object"] * 6  # (schema HEADs)
        # Another client wrote in between: the swap fails, and the write reads and lists.
        etags.append(self.make_second_client(store).put(MAC_A, {"n": 4}).etag)
        sent.clear()
        etags.append(store.put(MAC_A, {"n": 5}).etag)
        assert {"get_object", "list_objects_v2"} <= set(sent)
        # Pruning lists only past the slack, and removes its batch in one request.
        sent.clear()
        etags += [store.put(MAC_A, {"n": n}).etag for n in range(6, 16)]
        assert store.wait_for_background(timeout=60)  # pruning runs after the write returns
        assert sent.count("list_objects_v2") <= 4
        assert "delete_objects" in sent
        assert "delete_object" not in sent
        assert [v.etag for v in store.history(MAC_A)] == etags[::-1][:8]
        assert len(backend_of(store).list_hidden(f".history/{MAC_A}")) <= 8 + 2

    def test_description_names_bucket_and_endpoint_not_secrets(self, store: ConfigStore) -> None:
        assert store.description.startswith(f"s3://{BUCKET}/")
        assert self.server.endpoint in store.description
        assert SECRET_KEY not in store.description


class TestMotoStore(S3Contract):
    server_fixture = "moto"
    # moto spends ~10 ms of CPU a request: half the examples of SeaweedFS's run, the real S3
    # server the state machine is meant for (radosgw refuses our deletes: it has no run).
    stateful_settings = settings(S3Contract.stateful_settings, max_examples=6)

    def test_listing_pages_through(self, store: ConfigStore) -> None:
        backend = backend_of(store)
        paged = ConfigStore(
            S3Backend(backend._fs, f"{backend.bucket}/{backend.prefix}", page_size=7)
        )
        macs = [MacAddress(i) for i in range(30)]
        for i, mac in enumerate(macs):
            self.write_raw(store, mac.file_name, encode_document({"n": i}))
        self.write_raw(store, ".hidden", b"x")
        self.write_raw(store, "sub/" + MAC_A.file_name, b"{}")
        summaries = paged.list()
        assert [s.mac_address for s in summaries] == macs
        assert [s.etag for s in summaries] == [
            compute_etag(encode_document({"n": i})) for i in range(30)
        ]
        assert paged.list() == store.list()


@pytest.mark.slow
class TestSeaweedfsStore(S3Contract):
    server_fixture = "seaweedfs"


def test_url_without_bucket_is_unsupported() -> None:
    with pytest.raises(UnsupportedStoreError):
        open_store("s3://")


def test_unreachable_server_is_an_outage_not_a_crash() -> None:
    port = free_port()  # nothing listens here
    store = open_store(
        "s3://fleet/configs",
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"},
        config_kwargs={"retries": {"max_attempts": 1}},
    )
    calls: list[Callable[[], object]] = [
        store.list,
        store.check,
        lambda: store.get(MAC_A),
        lambda: store.get_raw(MAC_A),
        lambda: store.put(MAC_A, {"n": 1}),
        lambda: store.delete(MAC_A),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailableError) as info:
            call()
        assert f"127.0.0.1:{port}" in info.value.message
    assert backend_of(store)._capabilities is None  # nothing was concluded from a dead network


# -- Ceph radosgw: a server that ignores If-Match on DELETE --------------------------------------

RGW_ENV = "IOT_CONFIG_TEST_RGW"


def test_radosgw_compare_and_swap_works_and_unsafe_delete_is_refused() -> None:
    """radosgw 16 enforces conditional PUTs but deletes whatever If-Match says: never delete."""
    endpoint = os.environ.get(RGW_ENV)
    if not endpoint:
        pytest.skip(f"set {RGW_ENV}=<radosgw endpoint> (nox -s ceph does)")
    opts: dict[str, Any] = {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "client_kwargs": {"endpoint_url": endpoint},
    }
    store = open_store(f"s3://rgw-{uuid.uuid4().hex[:12]}/fleet", create=True, **opts)
    other = open_store(url_of(store), skip_instance_cache=True, **opts)
    assert backend_of(store).capabilities() == S3Capabilities(
        conditional_put=True, conditional_delete=False
    )

    first = store.put(MAC_A, {"count": 0}, create_only=True)
    with pytest.raises(AlreadyExistsError):
        other.put(MAC_A, {"count": 9}, create_only=True)
    with pytest.raises(PreconditionFailedError):
        other.put(MAC_A, {"count": 9}, if_match=compute_etag(b"{}"))

    clients = [store, other]
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        with contextlib.suppress(AlreadyExistsError):
            clients[i % 2].put(MAC_B, {"creator": i}, create_only=True)
            winners.append(i)

    def increment(i: int) -> None:
        cas_increment(clients[i % 2], MAC_A, 5)

    for target in (create, increment):
        threads = [threading.Thread(target=target, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(winners) == 1
    assert store.get(MAC_B).content == {"creator": winners[0]}
    final = other.get(MAC_A)
    assert final.content == {"count": 40}
    assert final.etag != first.etag

    with pytest.raises(UnsupportedStoreError) as info:
        store.delete(MAC_A, if_match=final.etag)
    assert info.value.code == "UNSUPPORTED_STORE"
    assert store.get(MAC_A).etag == final.etag  # the refused delete removed nothing
    assert [s.mac_address for s in other.list()] == [MAC_B, MAC_A]
    store.check()
