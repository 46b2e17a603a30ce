"""A Hypothesis state machine that checks a store against a plain dict."""

# Rules are named for the operation they apply; docstrings on them would repeat the name.
# ruff: noqa: D102

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from iot_config_core.document import compute_etag
from iot_config_core.errors import AlreadyExistsError, NotFoundError, PreconditionFailedError
from iot_config_core.mac import MacAddress
from iot_config_core.store import ConfigStore

from .strategies import MAC_A, MAC_B, MAC_C, etag_of, mac_spellings, small_contents

if TYPE_CHECKING:
    from .contract import StoreContract

__all__ = ["StoreModelMachine"]


class StoreModelMachine(RuleBasedStateMachine):
    """Store operations checked against a dict of MAC -> (content, etag), and a history model.

    Operations go through the store and, when the backend has one, a second client on the same
    root, so cache coherence between clients is checked on every step. The history model is a
    list of versions per MAC (ETags, ``None`` for a delete), newest first, pruned to the store's
    limit, plus the version a hand edit made that no write has recorded yet (shown as external).
    The limit is small, so the clients' pruners work (in the background) through every run.
    """

    history_limit = 2

    def __init__(self, contract: StoreContract) -> None:
        super().__init__()
        self.contract = contract
        self.clients = [
            ConfigStore(c.backend, limits=c.limits, history_limit=self.history_limit)
            for c in contract.clients(contract.make_store())
        ]
        self.store = self.clients[0]
        self.model: dict[MacAddress, tuple[dict[str, Any], str]] = {}
        self.history: dict[MacAddress, list[str | None]] = {}
        self.external: dict[MacAddress, str] = {}
        self.hand_edits = 0

    macs = st.sampled_from([MAC_A, MAC_B, MAC_C])
    client = st.integers(min_value=0, max_value=1)

    def _client(self, index: int) -> ConfigStore:
        return self.clients[index % len(self.clients)]

    def _spell(self, data: st.DataObject, mac: MacAddress) -> str:
        return data.draw(mac_spellings(mac), label="spelling")

    def _current_etag(self, mac: MacAddress) -> str | None:
        entry = self.model.get(mac)
        return None if entry is None else entry[1]

    def _stored(self, mac: MacAddress, content: dict[str, Any]) -> None:
        etag = etag_of(content)
        if etag != self._current_etag(mac):
            self._recorded(mac, etag)
        self.model[mac] = (content, etag)

    def _recorded(self, mac: MacAddress, etag: str | None) -> None:
        """A write through the store: it records a hand-edited version first, then its own."""
        versions = self.history.setdefault(mac, [])
        if mac in self.external:
            versions.insert(0, self.external.pop(mac))
        versions.insert(0, etag)
        del versions[self.store.history_limit :]

    @rule(data=st.data(), mac=macs, content=small_contents, client=client)
    def put(
        self, data: st.DataObject, mac: MacAddress, content: dict[str, Any], client: int
    ) -> None:
        stored = self._client(client).put(self._spell(data, mac), content)
        self._stored(mac, content)
        assert stored.etag == self.model[mac][1]

    @rule(
        mac=macs,
        content=small_contents,
        use_current=st.booleans(),
        other=small_contents,
        client=client,
    )
    def put_if_match(
        self,
        mac: MacAddress,
        content: dict[str, Any],
        use_current: bool,
        other: dict[str, Any],
        client: int,
    ) -> None:
        current = self._current_etag(mac)
        tag = current if use_current and current is not None else etag_of(other)
        if tag == current:
            self._client(client).put(mac, content, if_match=tag)
            self._stored(mac, content)
        else:
            with pytest.raises(PreconditionFailedError) as info:
                self._client(client).put(mac, content, if_match=tag)
            assert info.value.current_etag == current

    @rule(mac=macs, content=small_contents, client=client)
    def create_only(self, mac: MacAddress, content: dict[str, Any], client: int) -> None:
        if mac in self.model:
            with pytest.raises(AlreadyExistsError) as info:
                self._client(client).put(mac, content, create_only=True)
            assert info.value.current_etag == self._current_etag(mac)
        else:
            self._client(client).put(mac, content, create_only=True)
            self._stored(mac, content)

    @rule(mac=macs, content=small_contents, client=client)
    def put_if_none_match_star(self, mac: MacAddress, content: dict[str, Any], client: int) -> None:
        if mac in self.model:
            with pytest.raises(PreconditionFailedError):
                self._client(client).put(mac, content, if_none_match="*")
        else:
            self._client(client).put(mac, content, if_none_match="*")
            self._stored(mac, content)

    @rule(mac=macs, content=small_contents)
    def hand_edit(self, mac: MacAddress, content: dict[str, Any]) -> None:
        # Each hand edit is new bytes: restoring the exact bytes of an older version by hand
        # cannot be told from that version being current all along (docs/history.md).
        self.hand_edits += 1
        content = {**content, "_edit": self.hand_edits}
        data = json.dumps(content, separators=(",", ":")).encode()
        self.contract.write_raw(self.store, mac.file_name, data)
        self.model[mac] = (content, compute_etag(data))
        self.external[mac] = compute_etag(data)

    @rule(data=st.data(), mac=macs, client=client)
    def get(self, data: st.DataObject, mac: MacAddress, client: int) -> None:
        store = self._client(client)
        if mac in self.model:
            got = store.get(self._spell(data, mac))
            assert (got.content, got.etag) == self.model[mac]
        else:
            with pytest.raises(NotFoundError):
                store.get(self._spell(data, mac))

    @rule(mac=macs, client=client)
    def get_raw(self, mac: MacAddress, client: int) -> None:
        store = self._client(client)
        if mac in self.model:
            raw = store.get_raw(mac)
            assert json.loads(raw.data) == self.model[mac][0]
            assert raw.etag == self.model[mac][1] == compute_etag(raw.data)
        else:
            with pytest.raises(NotFoundError):
                store.get_raw(mac)

    @rule(mac=macs, client=client)
    def delete(self, mac: MacAddress, client: int) -> None:
        if mac in self.model:
            self._client(client).delete(mac)
            del self.model[mac]
            self._recorded(mac, None)
        else:
            with pytest.raises(NotFoundError):
                self._client(client).delete(mac)

    @rule(mac=macs, use_current=st.booleans(), other=small_contents, client=client)
    def delete_if_match(
        self, mac: MacAddress, use_current: bool, other: dict[str, Any], client: int
    ) -> None:
        current = self._current_etag(mac)
        tag = current if use_current and current is not None else etag_of(other)
        store = self._client(client)
        if current is None:
            with pytest.raises(NotFoundError):
                store.delete(mac, if_match=tag)
        elif tag == current:
            store.delete(mac, if_match=tag)
            del self.model[mac]
            self._recorded(mac, None)
        else:
            with pytest.raises(PreconditionFailedError) as info:
                store.delete(mac, if_match=tag)
            assert info.value.current_etag == current

    @rule(mac=macs, client=client)
    def history_agrees(self, mac: MacAddress, client: int) -> None:
        limit = self.store.history_limit
        shown = [self.external[mac]] if mac in self.external else []
        expected = (shown + self.history.get(mac, []))[:limit]
        if not expected:
            with pytest.raises(NotFoundError):
                self._client(client).history(mac)
            return
        assert [v.etag for v in self._client(client).history(mac)] == expected

    @rule()
    def records_are_bounded(self) -> None:
        # Once pruning settled, a device keeps at most the limit and its slack in records.
        for client in self.clients:
            assert client.wait_for_background(timeout=60)
        for mac in (MAC_A, MAC_B, MAC_C):
            records = self.store.backend.list_hidden(f".history/{mac}")
            assert len(records) <= self.history_limit + self.history_limit // 4, records

    @rule(mac=macs, client=client)
    def rollback_to_oldest(self, mac: MacAddress, client: int) -> None:
        versions = [etag for etag in self.history.get(mac, []) if etag is not None]
        if not versions or mac in self.external:
            return  # nothing to roll back to, or a version the model cannot name the content of
        target = versions[-1]
        content = self._client(client).version(mac, target).content
        self._client(client).rollback(mac, target)
        self._stored(mac, dict(content))

    @rule(client=client)
    def list_configs(self, client: int) -> None:
        summaries = self._client(client).list()
        assert [s.mac_address for s in summaries] == sorted(self.model)
        for summary in summaries:
            content, etag = self.model[summary.mac_address]
            assert summary.etag == etag
            name = content.get("deviceName")
            assert summary.device_name == (name if isinstance(name, str) else None)

    @invariant()
    def existence_agrees(self) -> None:
        for mac in (MAC_A, MAC_B, MAC_C):
            assert self.store.exists(mac) == (mac in self.model)
