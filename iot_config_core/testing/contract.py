"""`StoreContract`: the behaviour every store shows, whatever its backend, as a pytest suite."""

# Test names say what each test proves; docstrings on them would repeat the name.
# ruff: noqa: D102

from __future__ import annotations

import abc
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jsonpatch
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from iot_config_core.backend import Blob
from iot_config_core.document import DEFAULT_MAX_DEPTH, compute_etag, encode_document
from iot_config_core.errors import (
    AlreadyExistsError,
    ConfigError,
    CorruptDocumentError,
    DocumentTooLargeError,
    InvalidDocumentError,
    InvalidETagError,
    InvalidMacError,
    NotFoundError,
    PreconditionFailedError,
    SchemaViolationError,
    StoredDocumentTooLargeError,
    StoreMissingError,
    StoreUnavailableError,
    VersionNotFoundError,
)
from iot_config_core.history import PendingRecord, attributed
from iot_config_core.mac import MacAddress
from iot_config_core.store import ConfigStore, open_store

from .stateful import StoreModelMachine
from .strategies import MAC_A, MAC_B, MAC_C, etag_of, nest_depth

__all__ = ["PosixStoreContract", "StoreContract", "cas_increment", "with_history_limit"]


def _run_threads(count: int, target: Callable[[int], object]) -> list[object]:
    """Run ``target(i)`` in ``count`` threads released together; results or raised exceptions."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # collected: the test asserts on each outcome
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a writer thread hung"
    return results


def cas_increment(store: ConfigStore, mac: MacAddress | str, times: int) -> int:
    """Increment ``content["count"]`` ``times`` times by read / put(if_match) / retry.

    Returns how many precondition failures (lost races) it retried after.
    """
    retries = 0
    for _ in range(times):
        while True:
            current = store.get(mac)
            content = {**current.content, "count": current.content["count"] + 1}
            try:
                store.put(mac, content, if_match=current.etag)
                break
            except PreconditionFailedError:
                retries += 1
    return retries


def _pending(
    store: ConfigStore, mac: MacAddress, data: bytes, current: Blob | None
) -> PendingRecord:
    """The records a writer of ``data`` over ``current`` would write, written by no one yet."""
    history = store._history  # noqa: SLF001
    listed = store._backend.list_hidden(history.directory(mac))  # noqa: SLF001
    return history.begin(mac, data, current, listed)


def _leave_record(store: ConfigStore, mac: MacAddress, data: bytes, current: Blob | None) -> None:
    """What a writer killed between its record and its swap (or losing its race) leaves."""
    for path, raw in _pending(store, mac, data, current).records:
        store._backend.put_hidden(path, raw)  # noqa: SLF001


def with_history_limit(store: ConfigStore, limit: int) -> ConfigStore:
    """Another client of ``store``'s backend that keeps ``limit`` versions per device."""
    return ConfigStore(store._backend, limits=store.limits, history_limit=limit)  # noqa: SLF001


class StoreContract(abc.ABC):
    """Behaviour every store must show, whatever its backend. Subclass it in a ``Test*`` class.

    Subclasses implement `make_store`, `write_raw`, `remove_raw` and `list_raw`; the optional
    hooks `make_second_client` and `make_missing_store` skip their tests when not overridden.
    """

    stateful_settings: ClassVar[settings] = settings(
        max_examples=25,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    race_threads: ClassVar[int] = 8
    counter_threads: ClassVar[int] = 4
    counter_increments: ClassVar[int] = 10

    # -- hooks ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def make_store(self) -> ConfigStore:
        """A store over a fresh, empty root that exists."""

    def make_second_client(self, store: ConfigStore) -> ConfigStore:  # noqa: ARG002
        """Another store on the same root, as another process or mount would open it."""
        pytest.skip("backend offers no second client")

    def make_missing_store(self) -> ConfigStore:
        """A store whose root does not exist (and is not created by opening it)."""
        pytest.skip("backend cannot express a missing root")

    @abc.abstractmethod
    def write_raw(self, store: ConfigStore, name: str, data: bytes) -> None:
        """Put ``data`` at ``<root>/<name>`` without going through ``store`` (a hand edit)."""

    @abc.abstractmethod
    def remove_raw(self, store: ConfigStore, name: str) -> None:
        """Delete ``<root>/<name>`` without going through ``store``."""

    @abc.abstractmethod
    def list_raw(self, store: ConfigStore) -> list[str]:
        """Every file name directly in the root, hidden ones included (directories excluded)."""

    # -- fixtures ---------------------------------------------------------------------------------

    @pytest.fixture
    def store(self) -> ConfigStore:
        return self.make_store()

    # -- create, read, update ---------------------------------------------------------------------

    def test_new_store_is_empty(self, store: ConfigStore) -> None:
        assert store.list() == []
        assert store.listing().skipped == ()
        assert store.count() == 0

    def test_put_get_round_trip(self, store: ConfigStore) -> None:
        content = {"deviceName": "kitchen", "enableOTA": False, "nested": {"a": [1, 2.5, None]}}
        stored = store.put("AA:BB:CC:DD:EE:01", content)
        assert stored.mac_address == MAC_A
        assert stored.content == content
        assert stored.etag == etag_of(content)
        assert stored.size == len(encode_document(content))
        got = store.get(MAC_A)
        assert got.content == content
        assert got.etag == stored.etag
        assert got.size == stored.size

    def test_any_mac_spelling_names_one_document(self, store: ConfigStore) -> None:
        store.put(" AA:BB:CC:DD:EE:01\n", {"v": 1})
        for spelling in [
            "aa-bb-cc-dd-ee-01",
            "AABBCCDDEE01",
            "aabb.ccdd.ee01",
            "Aa:bB:cc:DD:ee:01",
        ]:
            assert store.get(spelling).content == {"v": 1}
        store.put("aabbccddee01", {"v": 2})
        assert [s.mac_address for s in store.list()] == [MAC_A]
        assert MAC_A.file_name in self.list_raw(store)
        assert store.get(MAC_A).content == {"v": 2}

    def test_get_raw_serves_stored_bytes(self, store: ConfigStore) -> None:
        content = {"deviceName": "hall", "list": [1, 2]}
        stored = store.put(MAC_A, content)
        raw = store.get_raw(str(MAC_A).upper())
        assert raw.data == encode_document(content)
        assert raw.data.endswith(b"}\n")
        assert b'\n  "deviceName": "hall"' in raw.data  # pretty-printed for hand editing
        assert raw.etag == stored.etag == compute_etag(raw.data)
        assert raw.size == len(raw.data)
        assert raw.mac_address == MAC_A
        assert store.get_raw(MAC_A) == raw  # second call: served from the validated cache

    def test_put_same_content_keeps_etag(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"a": 1})
        again = store.put(MAC_A, {"a": 1}, if_match=first.etag)
        assert again.etag == first.etag
        assert store.get(MAC_A).etag == first.etag

    def test_put_overwrites(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"a": 1})
        second = store.put(MAC_A, {"a": 2})
        assert second.etag != first.etag
        assert store.get(MAC_A).content == {"a": 2}
        assert store.get_raw(MAC_A).etag == second.etag
        assert store.etag(MAC_A) == second.etag
        assert store.exists(MAC_A)

    def test_missing_config(self, store: ConfigStore) -> None:
        with pytest.raises(NotFoundError) as info:
            store.get(MAC_A)
        assert info.value.code == "NOT_FOUND"
        assert info.value.details["mac_address"] == str(MAC_A)
        with pytest.raises(NotFoundError):
            store.get_raw(MAC_A)
        with pytest.raises(NotFoundError):
            store.delete(MAC_A)
        assert store.etag(MAC_A) is None
        assert not store.exists(MAC_A)

    def test_invalid_mac_is_rejected_before_storage(self, store: ConfigStore) -> None:
        for bad in ["", "aa:bb:cc:dd:ee", "../../etc/passwd", "aa:bb:cc:dd:ee:f\u0663", "x" * 100]:
            with pytest.raises(InvalidMacError):
                store.put(bad, {"a": 1})
            with pytest.raises(InvalidMacError):
                store.get(bad)
            with pytest.raises(InvalidMacError):
                store.get_raw(bad)
            with pytest.raises(InvalidMacError):
                store.delete(bad)
        assert self.list_raw(store) == [] or all(n.startswith(".") for n in self.list_raw(store))

    def test_invalid_content_leaves_stored_document_untouched(self, store: ConfigStore) -> None:
        stored = store.put(MAC_A, {"a": 1})
        bad_contents: list[Any] = [
            {"x": float("nan")},
            {"x": float("inf")},
            {1: "int key"},
            {"x": {1, 2}},
            {"x": b"bytes"},
            {"x": "\ud800"},
            ["not", "an", "object"],
            nest_depth(DEFAULT_MAX_DEPTH + 1),
        ]
        for bad in bad_contents:
            with pytest.raises(InvalidDocumentError):
                store.put(MAC_A, bad)
        with pytest.raises(DocumentTooLargeError):
            store.put(MAC_A, {"blob": "x" * (store.limits.max_bytes + 1)})
        assert store.get(MAC_A).etag == stored.etag
        with pytest.raises(InvalidDocumentError):
            store.put(MAC_B, {"x": float("nan")})
        assert not store.exists(MAC_B)

    # -- preconditions ----------------------------------------------------------------------------

    def test_if_match_current_etag(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"a": 1})
        second = store.put(MAC_A, {"a": 2}, if_match=first.etag)
        third = store.put(MAC_A, {"a": 3}, if_match=f'"{second.etag}"')
        fourth = store.put(MAC_A, {"a": 4}, if_match=f'"nope", W/"x", "{third.etag}"')
        store.put(MAC_A, {"a": 5}, if_match="*")
        assert fourth.etag != third.etag
        assert store.get(MAC_A).content == {"a": 5}

    def test_if_match_stale_etag_fails_with_current(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"a": 1})
        second = store.put(MAC_A, {"a": 2})
        with pytest.raises(PreconditionFailedError) as info:
            store.put(MAC_A, {"a": 3}, if_match=first.etag)
        assert info.value.code == "PRECONDITION_FAILED"
        assert info.value.current_etag == second.etag
        assert info.value.details["mac_address"] == str(MAC_A)
        assert store.get(MAC_A).content == {"a": 2}

    def test_if_match_weak_tag_never_matches(self, store: ConfigStore) -> None:
        stored = store.put(MAC_A, {"a": 1})
        with pytest.raises(PreconditionFailedError) as info:
            store.put(MAC_A, {"a": 2}, if_match=f'W/"{stored.etag}"')
        assert info.value.current_etag == stored.etag
        with pytest.raises(PreconditionFailedError):
            store.delete(MAC_A, if_match=f'W/"{stored.etag}"')
        assert store.get(MAC_A).content == {"a": 1}

    def test_if_match_on_missing_config_fails(self, store: ConfigStore) -> None:
        for condition in ["*", '"abc"', etag_of({"a": 1})]:
            with pytest.raises(PreconditionFailedError) as info:
                store.put(MAC_A, {"a": 1}, if_match=condition)
            assert info.value.current_etag is None
        assert not store.exists(MAC_A)

    def test_malformed_etag_is_rejected(self, store: ConfigStore) -> None:
        stored = store.put(MAC_A, {"a": 1})
        for bad in ['"unterminated', "", '"a" "b"', 'W/"x', '"a",,', 'a"b']:
            with pytest.raises(InvalidETagError):
                store.put(MAC_A, {"a": 2}, if_match=bad)
            with pytest.raises(InvalidETagError):
                store.put(MAC_A, {"a": 2}, if_none_match=bad)
            with pytest.raises(InvalidETagError):
                store.delete(MAC_A, if_match=bad)
        assert store.get(MAC_A).etag == stored.etag

    def test_if_none_match_star(self, store: ConfigStore) -> None:
        created = store.put(MAC_A, {"a": 1}, if_none_match="*")
        with pytest.raises(PreconditionFailedError) as info:
            store.put(MAC_A, {"a": 2}, if_none_match="*")
        assert info.value.current_etag == created.etag
        assert store.get(MAC_A).content == {"a": 1}

    def test_if_none_match_specific_tags(self, store: ConfigStore) -> None:
        stored = store.put(MAC_A, {"a": 1})
        for condition in [
            stored.etag,
            f'"{stored.etag}"',
            f'W/"{stored.etag}"',
            f'"x", "{stored.etag}"',
        ]:
            with pytest.raises(PreconditionFailedError) as info:
                store.put(MAC_A, {"a": 2}, if_none_match=condition)
            assert info.value.current_etag == stored.etag
        updated = store.put(MAC_A, {"a": 3}, if_none_match='"something-else"')
        assert store.get(MAC_A).etag == updated.etag
        store.put(MAC_B, {"b": 1}, if_none_match=stored.etag)  # absent never matches a tag
        assert store.exists(MAC_B)

    def test_create_only(self, store: ConfigStore) -> None:
        created = store.put(MAC_A, {"a": 1}, create_only=True)
        with pytest.raises(AlreadyExistsError) as info:
            store.put(MAC_A, {"a": 2}, create_only=True)
        assert info.value.code == "ALREADY_EXISTS"
        assert info.value.current_etag == created.etag
        with pytest.raises(AlreadyExistsError):  # even when the content is identical
            store.put(MAC_A, {"a": 1}, create_only=True)
        assert store.get(MAC_A).content == {"a": 1}

    # -- delete -----------------------------------------------------------------------------------

    def test_delete(self, store: ConfigStore) -> None:
        store.put(MAC_A, {"a": 1})
        store.put(MAC_B, {"b": 1})
        store.get_raw(MAC_A)
        store.delete("AA:BB:CC:DD:EE:01")
        with pytest.raises(NotFoundError):
            store.get(MAC_A)
        with pytest.raises(NotFoundError):
            store.get_raw(MAC_A)
        assert [s.mac_address for s in store.list()] == [MAC_B]
        assert MAC_A.file_name not in self.list_raw(store)
        with pytest.raises(NotFoundError):
            store.delete(MAC_A)

    def test_delete_if_match(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"a": 1})
        second = store.put(MAC_A, {"a": 2})
        with pytest.raises(PreconditionFailedError) as info:
            store.delete(MAC_A, if_match=first.etag)
        assert info.value.current_etag == second.etag
        assert store.get(MAC_A).content == {"a": 2}
        store.delete(MAC_A, if_match=f'"{first.etag}", "{second.etag}"')
        assert not store.exists(MAC_A)
        store.put(MAC_A, {"a": 3})
        store.delete(MAC_A, if_match="*")
        assert not store.exists(MAC_A)

    # -- listing ----------------------------------------------------------------------------------

    def test_list_is_sorted_by_mac_with_summary_fields(self, store: ConfigStore) -> None:
        macs = [MacAddress(v) for v in (0xFF, 0x1, 0xAABB00000000, 0x10, 0xFFFFFFFFFFFF, 0x0)]
        for i, mac in enumerate(macs):
            store.put(
                mac.with_separator(":", upper=True), {"deviceName": f"d{i}", "enableOTA": True}
            )
        store.put(MAC_A, {"deviceName": 7, "enableOTA": "yes", "deviceEntityId": "light.hall"})
        summaries = store.list()
        assert [s.mac_address for s in summaries] == sorted([*macs, MAC_A])
        by_mac = {s.mac_address: s for s in summaries}
        odd = by_mac[MAC_A]
        assert (odd.device_name, odd.enable_ota, odd.device_entity_id) == (None, None, "light.hall")
        assert by_mac[macs[2]].device_name == "d2"
        assert by_mac[macs[2]].enable_ota is True
        assert by_mac[macs[2]].etag == store.get(macs[2]).etag
        assert store.count() == len(macs) + 1

    def test_listing_generation_changes_only_with_contents(self, store: ConfigStore) -> None:
        store.put(MAC_A, {"a": 1})
        first = store.listing()
        assert store.listing().generation == first.generation
        store.put(MAC_A, {"a": 1})  # same bytes: not a change
        assert store.listing().generation == first.generation
        store.put(MAC_B, {"b": 1})
        second = store.listing()
        assert second.generation != first.generation
        assert [s.mac_address for s in second.summaries] == [MAC_B, MAC_A]

    def test_changes_by_another_client_are_seen(self, store: ConfigStore) -> None:
        store.put(MAC_A, {"deviceName": "one"})
        store.put(MAC_B, {"deviceName": "b"})
        other = self.make_second_client(store)
        assert [s.device_name for s in store.list()] == ["b", "one"]
        assert store.get_raw(MAC_A).data == encode_document({"deviceName": "one"})
        other.put(MAC_A, {"deviceName": "two, longer"})
        other.put(MAC_C, {"deviceName": "c"})
        other.delete(MAC_B)
        assert [(s.mac_address, s.device_name) for s in store.list()] == [
            (MAC_C, "c"),
            (MAC_A, "two, longer"),
        ]
        assert store.get_raw(MAC_A).data == encode_document({"deviceName": "two, longer"})
        other.put(MAC_A, {"deviceName": "3"})  # same size as before: the version must differ
        assert store.get_raw(MAC_A).data == encode_document({"deviceName": "3"})
        with pytest.raises(NotFoundError):
            store.get_raw(MAC_B)
        with pytest.raises(PreconditionFailedError):  # store's last-seen etag is stale now
            store.put(MAC_C, {"x": 1}, if_match=etag_of({"deviceName": "other"}))

    # -- schemas ----------------------------------------------------------------------------------

    def test_schemas_live_beside_the_configs_and_are_never_listed_as_configs(
        self, store: ConfigStore
    ) -> None:
        store.put(MAC_A, {"deviceModel": "esp32", "pollSeconds": "soon"})  # before the schema
        schema = {"type": "object", "properties": {"pollSeconds": {"type": "integer"}}}
        stored = store.schemas.put("esp32", schema)
        store.schemas.put("default", {"required": ["deviceName"]}, relaxed=True)
        assert store.schemas.names() == ["default", "esp32"]
        assert [s.mac_address for s in store.list()] == [MAC_A]
        assert store.listing().skipped == ()
        assert store.get_raw(MAC_A).data  # stored before the schema: still served
        with pytest.raises(SchemaViolationError) as caught:
            store.put(MAC_B, {"deviceModel": "esp32", "pollSeconds": "x"})
        assert caught.value.details["problems"] == [
            {"pointer": "/pollSeconds", "message": "'x' is not of type 'integer'"}
        ]
        assert not store.exists(MAC_B)
        store.put(MAC_B, {"deviceModel": "esp32", "pollSeconds": 5})
        report = store.schema_report()
        assert (report.checked, [v.mac_address for v in report.violations]) == (2, [MAC_A])
        other = self.make_second_client(store)  # another replica sees the same schemas
        assert other.schemas.get("esp32").etag == stored.etag
        other.schemas.delete("esp32")
        store.put(MAC_B, {"deviceModel": "esp32", "pollSeconds": "x"})  # default: relaxed
        assert store.schemas.names() == ["default"]

    def test_hand_edits_are_seen(self, store: ConfigStore) -> None:
        store.put(MAC_A, {"deviceName": "old"})
        assert store.list()[0].device_name == "old"
        assert store.get_raw(MAC_A).etag == etag_of({"deviceName": "old"})
        edited = b'{"deviceName":"edited by hand"}'
        self.write_raw(store, MAC_A.file_name, edited)
        assert store.list()[0].device_name == "edited by hand"
        raw = store.get_raw(MAC_A)
        assert raw.data == edited
        assert raw.etag == compute_etag(edited)  # the ETag is a hash of the bytes: edits show
        assert store.get(MAC_A).etag == compute_etag(edited)
        self.write_raw(store, MAC_B.file_name, b'{"deviceName": "new"}\n')
        assert [s.device_name for s in store.list()] == ["new", "edited by hand"]
        self.remove_raw(store, MAC_A.file_name)
        assert [s.mac_address for s in store.list()] == [MAC_B]
        with pytest.raises(NotFoundError):
            store.get_raw(MAC_A)

    def test_same_size_hand_edits_between_reads_are_seen(self, store: ConfigStore) -> None:
        # Two edits between reads, all versions the same size: a version token built from
        # recycled identities (object ids, inode numbers) would make the cached one look current.
        def version(i: int) -> bytes:
            return b'{"v": %d}' % (i % 10)

        self.write_raw(store, MAC_A.file_name, version(0))
        for i in range(2, 60, 2):
            assert store.get_raw(MAC_A).data == version(i - 2)
            self.write_raw(store, MAC_A.file_name, version(i - 1))
            self.write_raw(store, MAC_A.file_name, version(i))
        for i in range(60, 120, 2):
            assert [s.etag for s in store.list()] == [compute_etag(version(i - 2))]
            self.write_raw(store, MAC_A.file_name, version(i - 1))
            self.write_raw(store, MAC_A.file_name, version(i))

    def test_foreign_and_invalid_files_are_skipped(self, store: ConfigStore) -> None:
        store.put(MAC_A, {"deviceName": "ok"})
        foreign = {
            "README.txt": b"not a config",
            "AA-BB-CC-DD-EE-02.json": b"{}",  # not the canonical (lowercase) spelling
            "aa:bb:cc:dd:ee:02.json": b"{}",
            "aabbccddee02.json": b"{}",
            "aa-bb-cc-dd-ee-02.json.bak": b"{}",
            "aa-bb-cc-dd-ee-02": b"{}",
            ".hidden.json": b"{}",
        }
        for name, data in foreign.items():
            self.write_raw(store, name, data)
        corrupt = {
            MAC_B.file_name: b'{"deviceName": "broken",',
            MAC_C.file_name: b"[1, 2, 3]",
            "00-00-00-00-00-01.json": b'{"a": 1, "a": 2}',
            "00-00-00-00-00-02.json": b'{"a": NaN}',
            "00-00-00-00-00-03.json": b"\xff\xfe{}",
            "00-00-00-00-00-04.json": b"",
        }
        for name, data in corrupt.items():
            self.write_raw(store, name, data)
        listing = store.listing()
        assert [s.mac_address for s in listing.summaries] == [MAC_A]
        assert set(corrupt) <= set(listing.skipped)
        assert ".hidden.json" not in listing.skipped
        assert store.count() == 1
        assert store.list() == list(listing.summaries)  # stable on a second pass

    def test_corrupt_document_is_reported_not_served(self, store: ConfigStore) -> None:
        bad = b'{"deviceName": "half written'
        self.write_raw(store, MAC_A.file_name, bad)
        with pytest.raises(CorruptDocumentError) as info:
            store.get(MAC_A)
        assert info.value.code == "CORRUPT_DOCUMENT"
        assert info.value.details["reason"] == "syntax"
        assert info.value.details["etag"] == compute_etag(bad)
        assert info.value.details["mac_address"] == str(MAC_A)
        with pytest.raises(CorruptDocumentError):
            store.get_raw(MAC_A)
        with pytest.raises(CorruptDocumentError):  # not cached as good on the second call
            store.get_raw(MAC_A)
        assert store.exists(MAC_A)
        assert store.etag(MAC_A) == compute_etag(bad)
        with pytest.raises(AlreadyExistsError):
            store.put(MAC_A, {"a": 1}, create_only=True)

    def test_oversized_stored_document_is_reported_with_its_real_size(
        self, store: ConfigStore
    ) -> None:
        big = b'{"blob": "' + b"x" * (store.limits.max_bytes + 100) + b'"}'
        self.write_raw(store, MAC_A.file_name, big)
        for call in (store.get_raw, store.get):
            with pytest.raises(StoredDocumentTooLargeError) as info:
                call(MAC_A)
            assert info.value.code == "STORED_DOCUMENT_TOO_LARGE"
            assert isinstance(info.value, CorruptDocumentError)  # reported, never served
            assert info.value.details["reason"] == "too_large"
            assert info.value.details["size"] == len(big)
            assert info.value.details["limit"] == store.limits.max_bytes
            assert f"{len(big)} bytes" in info.value.message
        assert store.list() == []
        assert MAC_A.file_name in store.listing().skipped
        store.put(MAC_A, {"a": 1})  # overwriting repairs it
        assert store.get(MAC_A).content == {"a": 1}

    def test_put_repairs_corrupt_document(self, store: ConfigStore) -> None:
        bad = b"{not json"
        self.write_raw(store, MAC_A.file_name, bad)
        with pytest.raises(PreconditionFailedError):
            store.put(MAC_A, {"a": 1}, if_match=etag_of({"a": 0}))
        repaired = store.put(MAC_A, {"fixed": True}, if_match=compute_etag(bad))
        assert store.get(MAC_A).content == {"fixed": True}
        assert store.get_raw(MAC_A).etag == repaired.etag
        assert [s.mac_address for s in store.list()] == [MAC_A]
        self.write_raw(store, MAC_B.file_name, bad)
        store.put(MAC_B, {"fixed": 2})  # unconditional overwrite repairs too
        assert store.get(MAC_B).content == {"fixed": 2}

    def test_delete_corrupt_document(self, store: ConfigStore) -> None:
        bad = b"]"
        self.write_raw(store, MAC_A.file_name, bad)
        with pytest.raises(PreconditionFailedError):
            store.delete(MAC_A, if_match=etag_of({}))
        store.delete(MAC_A, if_match=compute_etag(bad))
        assert not store.exists(MAC_A)

    def test_hand_repaired_document_is_served(self, store: ConfigStore) -> None:
        self.write_raw(store, MAC_A.file_name, b"{broken")
        with pytest.raises(CorruptDocumentError):
            store.get_raw(MAC_A)
        assert store.list() == []
        self.write_raw(store, MAC_A.file_name, b'{"deviceName": "repaired by hand"}')
        assert store.get_raw(MAC_A).data == b'{"deviceName": "repaired by hand"}'
        assert [s.device_name for s in store.list()] == ["repaired by hand"]
        assert store.listing().skipped == ()

    # -- operations -------------------------------------------------------------------------------

    def test_health_check_leaves_nothing_behind(self, store: ConfigStore) -> None:
        store.put(MAC_A, {"a": 1})
        before = sorted(self.list_raw(store))
        store.check()
        store.check()
        assert sorted(self.list_raw(store)) == before
        assert [s.mac_address for s in store.list()] == [MAC_A]

    def test_no_temporary_files_visible(self, store: ConfigStore) -> None:
        macs = [MacAddress(i) for i in range(1, 6)]
        for round_ in range(4):
            for mac in macs:
                store.put(mac, {"round": round_, "pad": "x" * round_ * 100})
        store.delete(macs[0])
        expected = {mac.file_name for mac in macs[1:]}
        visible = {name for name in self.list_raw(store) if not name.startswith(".")}
        assert visible == expected
        assert store.listing().skipped == ()
        assert [s.mac_address for s in store.list()] == macs[1:]

    def test_missing_root_is_an_outage(self) -> None:
        store = self.make_missing_store()
        calls: list[Callable[[], object]] = [
            store.list,
            store.listing,
            store.count,
            store.check,
            lambda: store.get(MAC_A),
            lambda: store.get_raw(MAC_A),
            lambda: store.exists(MAC_A),
            lambda: store.etag(MAC_A),
            lambda: store.put(MAC_A, {"a": 1}),
            lambda: store.put(MAC_A, {"a": 1}, create_only=True),
            lambda: store.delete(MAC_A),
        ]
        messages = set()
        for call in calls:
            with pytest.raises(StoreMissingError) as info:
                call()
            assert info.value.code == "STORE_UNAVAILABLE"
            assert isinstance(info.value, StoreUnavailableError)
            assert not isinstance(info.value, OSError)
            messages.add(info.value.message)
        # One message wherever it is noticed: where the store is, and how to create it.
        assert len(messages) == 1
        (message,) = messages
        assert store.description in message
        assert "--create-store" in message
        store.create_root()  # only now does the root exist, and nothing was written before
        assert store.list() == []
        store.put(MAC_A, {"a": 1})
        assert store.get(MAC_A).content == {"a": 1}

    def test_errors_are_config_errors_with_codes(self, store: ConfigStore) -> None:
        with pytest.raises(ConfigError) as info:
            store.get("nonsense")
        assert info.value.code == "INVALID_MAC"
        assert "nonsense" in repr(info.value)

    # -- model-checked sequences ------------------------------------------------------------------

    def test_stateful_against_dict_model(self) -> None:
        """Random operation sequences over a small MAC pool agree with a plain dict."""
        contract = self

        class Machine(StoreModelMachine):
            def __init__(self) -> None:
                super().__init__(contract)

        run_state_machine_as_test(Machine, settings=self.stateful_settings)  # type: ignore[no-untyped-call,unused-ignore]

    # -- concurrency ------------------------------------------------------------------------------

    def clients(self, store: ConfigStore) -> list[ConfigStore]:
        """``store`` and, when the backend offers one, a second client on the same root."""
        try:
            return [store, self.make_second_client(store)]
        except pytest.skip.Exception:
            return [store]

    def test_compare_and_swap_race_has_one_winner(self, store: ConfigStore) -> None:
        clients = self.clients(store)
        base = store.put(MAC_A, {"winner": None})
        n = self.race_threads

        def attempt(i: int) -> str:
            return clients[i % len(clients)].put(MAC_A, {"winner": i}, if_match=base.etag).etag

        results = _run_threads(n, attempt)
        winners = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(winners) == 1, results
        final = store.get(MAC_A)
        assert final.content == {"winner": winners[0]}
        for result in results:
            if not isinstance(result, str):
                assert isinstance(result, PreconditionFailedError), result
                assert result.current_etag == final.etag

    def test_create_only_race_has_one_winner(self, store: ConfigStore) -> None:
        clients = self.clients(store)

        def attempt(i: int) -> str:
            return clients[i % len(clients)].put(MAC_B, {"creator": i}, create_only=True).etag

        results = _run_threads(self.race_threads, attempt)
        winners = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(winners) == 1, results
        assert all(isinstance(r, AlreadyExistsError | str) for r in results), results
        assert store.get(MAC_B).content == {"creator": winners[0]}

    def test_concurrent_increments_lose_no_update(self, store: ConfigStore) -> None:
        clients = self.clients(store)
        store.put(MAC_C, {"count": 0})
        k, m = self.counter_threads, self.counter_increments
        results = _run_threads(k, lambda i: cas_increment(clients[i % len(clients)], MAC_C, m))
        assert all(isinstance(r, int) for r in results), results
        assert store.get(MAC_C).content == {"count": k * m}
        assert json.loads(store.get_raw(MAC_C).data) == {"count": k * m}

    # -- history ----------------------------------------------------------------------------------

    def test_history_records_each_write_newest_first(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"v": 1})
        with attributed("alice", "api", "req-1"):
            second = store.put(MAC_A, {"v": 2}, if_match=first.etag)
        store.put(MAC_A, {"v": 2})  # the same bytes: not a new version
        history = store.history(MAC_A)
        assert [v.etag for v in history] == [second.etag, first.etag]
        assert [v.previous for v in history] == [first.etag, None]
        assert (history[0].author, history[0].source, history[0].request_id) == (
            "alice",
            "api",
            "req-1",
        )
        assert history[1].source == "library"
        assert [v.size for v in history] == [second.size, first.size]
        assert all(v.saved_at is not None and not v.deleted for v in history)
        assert store.version(MAC_A, first.etag).content == {"v": 1}
        assert store.version(MAC_A, f'"{first.etag}"').etag == first.etag
        # History is never a config: not listed, not skipped, not served.
        assert [s.mac_address for s in store.list()] == [MAC_A]
        assert store.listing().skipped == ()

    def test_history_of_unknown_device_is_not_found(self, store: ConfigStore) -> None:
        with pytest.raises(NotFoundError):
            store.history(MAC_B)
        store.put(MAC_B, {"v": 1})
        with pytest.raises(VersionNotFoundError) as info:
            store.version(MAC_B, etag_of({"v": 2}))
        assert info.value.details["etag"] == etag_of({"v": 2})
        with pytest.raises(VersionNotFoundError):
            store.rollback(MAC_B, "not-an-etag")
        assert [v.etag for v in store.history(MAC_B)] == [etag_of({"v": 1})]

    def test_delete_keeps_history_and_undelete_restores(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"v": 1})
        second = store.put(MAC_A, {"v": 2})
        store.delete(MAC_A)
        history = store.history(MAC_A)
        assert [(v.etag, v.deleted) for v in history] == [
            (None, True),
            (second.etag, False),
            (first.etag, False),
        ]
        assert history[0].previous == second.etag
        restored = store.undelete(MAC_A)
        assert (restored.content, restored.etag) == ({"v": 2}, second.etag)
        assert store.get(MAC_A).content == {"v": 2}
        assert [v.etag for v in store.history(MAC_A)][:2] == [second.etag, None]
        with pytest.raises(AlreadyExistsError):
            store.undelete(MAC_A)

    def test_rollback_writes_the_old_content_as_a_new_version(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"v": 1, "name": "good"})
        bad = store.put(MAC_A, {"v": 2, "name": "bricked"})
        with pytest.raises(PreconditionFailedError):
            store.rollback(MAC_A, first.etag, if_match=first.etag)
        assert store.get(MAC_A).etag == bad.etag
        rolled = store.rollback(MAC_A, first.etag, if_match=bad.etag)
        assert (rolled.content, rolled.etag) == (first.content, first.etag)
        assert [v.etag for v in store.history(MAC_A)] == [first.etag, bad.etag, first.etag]
        store.rollback(MAC_A, first.etag)  # already current: nothing new
        assert len(store.history(MAC_A)) == 3

    def test_diff_is_a_json_patch_between_versions(self, store: ConfigStore) -> None:
        old = store.put(MAC_A, {"name": "a", "list": [1, 2], "gone": True})
        new = store.put(MAC_A, {"name": "b", "list": [1, 2, 3], "nested": {"x": 1}})
        patch = store.diff(MAC_A, old.etag)
        assert patch == store.diff(MAC_A, old.etag, new.etag)
        assert jsonpatch.apply_patch(dict(old.content), patch) == new.content
        back = store.diff(MAC_A, new.etag, old.etag)
        assert jsonpatch.apply_patch(dict(new.content), back) == old.content
        assert store.diff(MAC_A, new.etag) == []

    def test_history_is_bounded_and_can_be_off(self, store: ConfigStore) -> None:
        limited = with_history_limit(store, 3)
        etags = [limited.put(MAC_A, {"v": i}).etag for i in range(10)]
        assert [v.etag for v in limited.history(MAC_A)] == etags[::-1][:3]
        assert limited.wait_for_background(timeout=60)  # pruning runs after the write returns
        assert len(store.backend.list_hidden(f".history/{MAC_A}")) == 3
        # With a slack (a quarter of the limit), records are pruned back to the limit.
        slack = with_history_limit(store, 8)
        etags = [slack.put(MAC_B, {"v": i}).etag for i in range(8 + 2 + 1)]
        assert slack.wait_for_background(timeout=60)
        assert len(store.backend.list_hidden(f".history/{MAC_B}")) == 8
        assert [v.etag for v in slack.history(MAC_B)] == etags[::-1][:8]
        slack.delete(MAC_B)
        assert store.backend.list_hidden(f".history/{MAC_B}") != []
        off = with_history_limit(store, 0)
        off.put(MAC_C, {"v": 1})
        off.delete(MAC_C)
        assert store.backend.list_hidden(f".history/{MAC_C}") == []
        assert off.history(MAC_A) == []
        with pytest.raises(VersionNotFoundError):
            off.rollback(MAC_A, etags[-2])

    def test_changes_outside_the_store_are_external_versions(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"v": 1})
        edited = b'{"v": 9}\n'
        self.write_raw(store, MAC_A.file_name, edited)
        history = store.history(MAC_A)
        assert [(v.etag, v.source, v.author) for v in history] == [
            (compute_etag(edited), "external", None),
            (first.etag, "library", history[1].author),
        ]
        third = store.put(MAC_A, {"v": 3})
        history = store.history(MAC_A)
        assert [(v.etag, v.source) for v in history] == [
            (third.etag, "library"),
            (compute_etag(edited), "external"),
            (first.etag, "library"),
        ]
        assert store.rollback(MAC_A, compute_etag(edited)).content == {"v": 9}

    def test_a_record_whose_swap_never_happened_is_not_shown(self, store: ConfigStore) -> None:
        first = store.put(MAC_A, {"v": 1})
        backend = store._backend  # noqa: SLF001
        # A writer killed between its record and its swap leaves exactly this behind.
        current = backend.read(MAC_A.file_name, store.limits.max_bytes)
        _leave_record(store, MAC_A, encode_document({"v": "lost"}), current)
        assert [v.etag for v in store.history(MAC_A)] == [first.etag]
        second = store.put(MAC_A, {"v": 2})
        assert [v.etag for v in store.history(MAC_A)] == [second.etag, first.etag]
        # A writer that read the first version lost its race to the second and has not removed
        # its record yet: the newest record is then one of a version that never was current.
        _leave_record(store, MAC_A, encode_document({"v": "late"}), current)
        history = store.history(MAC_A)
        assert [(v.etag, v.source) for v in history] == [
            (second.etag, "library"),
            (first.etag, "library"),
        ]
        third = store.put(MAC_A, {"v": 3})
        assert [v.etag for v in store.history(MAC_A)] == [third.etag, second.etag, first.etag]
        with pytest.raises(VersionNotFoundError):
            store.version(MAC_A, etag_of({"v": "lost"}))
        _leave_record(store, MAC_B, encode_document({"v": "lost"}), None)
        with pytest.raises(NotFoundError):
            store.history(MAC_B)

    def test_a_swap_whose_record_never_landed_is_external(self, store: ConfigStore) -> None:
        # Where the record goes alongside the swap (S3), a writer killed between the two leaves
        # a current config without a record: shown as external with its bytes, never torn.
        first = store.put(MAC_A, {"v": 1})
        backend = store._backend  # noqa: SLF001
        current = backend.read(MAC_A.file_name, store.limits.max_bytes)
        assert current is not None
        unrecorded = encode_document({"v": "unrecorded"})
        late = _pending(store, MAC_A, unrecorded, current)
        backend.replace(MAC_A.file_name, unrecorded, current.entry.token)
        history = store.history(MAC_A)
        assert [(v.etag, v.source) for v in history] == [
            (compute_etag(unrecorded), "external"),
            (first.etag, "library"),
        ]
        assert store.version(MAC_A, compute_etag(unrecorded)).content == {"v": "unrecorded"}
        # Another client writes next (it recorded the unrecorded version as external), and only
        # then the slow record lands: each version still appears once, in order.
        other = self.clients(store)[-1]
        third = other.put(MAC_A, {"v": 3})
        for path, raw in late.records:
            backend.put_hidden(path, raw)
        expected = [third.etag, compute_etag(unrecorded), first.etag]
        for client in self.clients(store):
            assert [v.etag for v in client.history(MAC_A)] == expected
        fourth = store.put(MAC_A, {"v": 4})
        assert [v.etag for v in store.history(MAC_A)] == [fourth.etag, *expected]

    def test_a_write_after_another_clients_is_recorded_after_it(self, store: ConfigStore) -> None:
        # A client that remembers its own last write must not record over another client's.
        clients = self.clients(store)
        first, other = clients[0], clients[-1]
        etags = [first.put(MAC_A, {"v": 1}).etag, other.put(MAC_A, {"v": 2}).etag]
        etags.append(first.put(MAC_A, {"v": 3}).etag)
        self.write_raw(store, MAC_A.file_name, b'{"v": 4}\n')
        etags += [compute_etag(b'{"v": 4}\n'), first.put(MAC_A, {"v": 5}).etag]
        with pytest.raises(PreconditionFailedError):
            first.put(MAC_A, {"v": 6}, if_match=etags[2])
        etags.append(first.put(MAC_A, {"v": 7}, if_match=etags[-1]).etag)
        for client in clients:
            assert [v.etag for v in client.history(MAC_A)] == etags[::-1]

    def test_racing_writers_are_each_recorded_once_in_order(self, store: ConfigStore) -> None:
        k, m = self.counter_threads, self.counter_increments
        clients = [with_history_limit(c, k * m + 5) for c in self.clients(store)]
        clients[0].put(MAC_C, {"count": 0})
        results = _run_threads(k, lambda i: cas_increment(clients[i % len(clients)], MAC_C, m))
        assert all(isinstance(r, int) for r in results), results
        expected = [etag_of({"count": n}) for n in range(k * m, -1, -1)]
        assert [v.etag for v in clients[-1].history(MAC_C)] == expected

    def test_a_burst_while_pruning_keeps_every_version_within_the_limit(
        self, store: ConfigStore
    ) -> None:
        # Writers race on one device with a small limit, so each client's pruner works through
        # the burst, and a reader alongside sees only acknowledged versions, newest first. At
        # the end, before and after pruning settled, the last `limit` versions are all there.
        k, m, limit = self.counter_threads, self.counter_increments, 4
        clients = [with_history_limit(c, limit) for c in self.clients(store)]
        clients[0].put(MAC_C, {"count": 0})
        count_of = {etag_of({"count": n}): n for n in range(k * m + 1)}
        writing = [k]
        turn = threading.Lock()
        seen: list[list[int]] = []

        def write(i: int) -> int:
            try:
                return cas_increment(clients[i % len(clients)], MAC_C, m)
            finally:
                with turn:
                    writing[0] -= 1

        def read() -> None:
            while writing[0] and len(seen) < 500:
                versions = clients[-1].history(MAC_C)
                # A version whose record has not landed yet shows as external (S3), and so does
                # one read just before a burst of writes pruned its record: not what this checks.
                if versions[0].source != "external":
                    seen.append([count_of[v.etag] for v in versions if v.etag is not None])

        results = _run_threads(k + 1, lambda i: write(i) if i < k else read())
        assert all(isinstance(r, int) for r in results[:k]), results
        for counts in seen:
            assert 0 < len(counts) <= limit, counts
            assert counts == sorted(set(counts), reverse=True), counts
        expected = [etag_of({"count": n}) for n in range(k * m, k * m - limit, -1)]
        for client in clients:
            assert [v.etag for v in client.history(MAC_C)] == expected
        for client in clients:
            assert client.wait_for_background(timeout=60)
            assert [v.etag for v in client.history(MAC_C)] == expected
        assert len(store.backend.list_hidden(f".history/{MAC_C}")) <= limit + limit // 4


class PosixStoreContract(StoreContract):
    """The contract on directories of a POSIX filesystem (local disk, a CephFS or NFS mount).

    A subclass sets ``self.base``, an existing directory, in an autouse fixture; each store gets
    a fresh directory under it. Hand edits write files in place, as an editor or ``cp`` does.
    """

    base: Path

    @staticmethod
    def root_of(store: ConfigStore) -> Path:
        """The directory of a POSIX store."""
        assert store.description.startswith("file://")
        return Path(store.description.removeprefix("file://"))

    def make_store(self) -> ConfigStore:
        return open_store(tempfile.mkdtemp(dir=self.base))

    def make_missing_store(self) -> ConfigStore:
        return open_store(os.path.join(tempfile.mkdtemp(dir=self.base), "not", "there"))

    def make_second_client(self, store: ConfigStore) -> ConfigStore:
        return open_store(f"file://{self.root_of(store)}")

    def write_raw(self, store: ConfigStore, name: str, data: bytes) -> None:
        (self.root_of(store) / name).write_bytes(data)

    def remove_raw(self, store: ConfigStore, name: str) -> None:
        (self.root_of(store) / name).unlink()

    def list_raw(self, store: ConfigStore) -> list[str]:
        return [p.name for p in self.root_of(store).iterdir() if not p.is_dir()]
