"""``GET /api/configs`` for large fleets: ETag and 304, pages that survive writes, filters."""

from __future__ import annotations

import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import webtest
from hypothesis import given
from hypothesis import strategies as st

from iot_config_core import ConfigStore, InvalidQueryError, ListQuery, MacAddress, open_store
from iot_config_core.query import MAX_LIMIT, decode_cursor, encode_cursor
from iot_config_core.testing.strategies import mac_addresses
from iot_config_server import Settings, create_app


@pytest.fixture
def store(disk_or_memory_store: ConfigStore) -> ConfigStore:
    return disk_or_memory_store


def mac(index: int) -> str:
    return str(MacAddress(index * 7919))


def fill(store: ConfigStore, count: int) -> list[str]:
    for index in range(count):
        ota = None if index % 3 == 2 else index % 3 == 0
        content: dict[str, Any] = {"deviceName": f"Sensor-{index}", "enableOTA": ota}
        if index % 2 == 0:
            content["deviceEntityId"] = f"sensor.room_{index}"
        store.put(mac(index), content)
    return sorted(mac(index) for index in range(count))


def macs(response: Any) -> list[str]:
    return [config["mac_address"] for config in response.json["configs"]]


def next_url(response: Any) -> str | None:
    link: str | None = response.headers.get("Link")
    if link is None:
        return None
    url, rel = link.split(";", 1)
    assert rel.strip() == 'rel="next"'
    return url.strip()[1:-1]


def walk(app: webtest.TestApp, url: str | None) -> list[str]:
    """The MACs of every page, following the Link headers from ``url``."""
    seen: list[str] = []
    while url is not None:
        answer = app.get(url)
        seen += macs(answer)
        url = next_url(answer)
    return seen


# -- ETag and 304 ---------------------------------------------------------------------------------


def test_unchanged_listing_answers_304_to_its_etag(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    fill(store, 3)
    first = app.get("/api/configs")
    etag = first.headers["ETag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert first.headers["Cache-Control"] == "no-cache"
    again = app.get("/api/configs", headers={"If-None-Match": etag}, status=304)
    assert again.body == b""
    assert again.headers["ETag"] == etag
    # a list of tags, and the weak form, match too (RFC 9110 weak comparison for GET)
    app.get("/api/configs", headers={"If-None-Match": f'"x", W/{etag}'}, status=304)
    app.get("/api/configs", headers={"If-None-Match": '"other"'}, status=200)


def test_a_write_by_another_writer_changes_the_etag(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    fill(store, 3)
    etag = app.get("/api/configs").headers["ETag"]
    store.put(mac(1), {"deviceName": "renamed"})  # not through this app
    changed = app.get("/api/configs", headers={"If-None-Match": etag}, status=200)
    assert changed.headers["ETag"] != etag
    store.delete(mac(1))
    gone = app.get("/api/configs", headers={"If-None-Match": changed.headers["ETag"]})
    assert gone.status_int == 200
    assert mac(1) not in macs(gone)


def test_the_etag_is_the_content_so_every_app_on_the_store_agrees(tmp_path: Path) -> None:
    root = str(tmp_path / "configs")
    store = open_store(root, create=True)
    fill(store, 4)
    one = webtest.TestApp(create_app(store, Settings()))
    other = webtest.TestApp(create_app(open_store(root), Settings()))  # a replica, or a restart
    for path in ("/api/configs", "/api/configs?limit=2", "/api/configs?name=sensor-1"):
        assert one.get(path).headers["ETag"] == other.get(path).headers["ETag"]
    # a write that leaves every listed field as it was leaves the answer, and its tag, alone
    before = one.get("/api/configs").headers["ETag"]
    config = store.get(mac(0))
    store.put(mac(0), {**config.content, "pollSeconds": 30})
    assert other.get("/api/configs").headers["ETag"] == before


def test_a_malformed_if_none_match_is_a_400(app: webtest.TestApp) -> None:
    answer = app.get("/api/configs", headers={"If-None-Match": '"unterminated'}, status=400)
    assert answer.json["code"] == "INVALID_HEADER"


# -- the default answer ---------------------------------------------------------------------------


def test_without_parameters_the_answer_is_the_whole_fleet_as_before(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    expected = fill(store, 5)
    answer = app.get("/api/configs")
    assert set(answer.json) == {"configs", "count"}
    assert macs(answer) == expected
    assert answer.json["count"] == 5
    assert "Link" not in answer.headers


# -- pages ----------------------------------------------------------------------------------------


def test_pages_walk_the_fleet_in_mac_order(app: webtest.TestApp, store: ConfigStore) -> None:
    expected = fill(store, 7)
    seen: list[str] = []
    url: str | None = "/api/configs?limit=3"
    pages = 0
    while url is not None:
        answer = app.get(url)
        assert answer.json["count"] == len(answer.json["configs"]) <= 3
        seen += macs(answer)
        url = next_url(answer)
        pages += 1
    assert seen == expected
    assert pages == 3


def test_a_page_that_ends_the_fleet_has_no_next_link(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    fill(store, 3)
    assert next_url(app.get("/api/configs?limit=3")) is None
    assert next_url(app.get("/api/configs?limit=2")) is not None


def test_the_next_link_keeps_the_filters_and_the_mount_prefix(store: ConfigStore) -> None:
    import bottle  # noqa: PLC0415

    fill(store, 9)
    parent = bottle.Bottle()
    parent.mount("/fleet/", create_app(store, Settings()))
    app = webtest.TestApp(parent)
    first = app.get("/fleet/api/configs?limit=1&name=SENSOR&enable_ota=true")
    url = next_url(first)
    assert url is not None
    assert url.startswith("/fleet/api/configs?")
    params = dict(urllib.parse.parse_qsl(url.split("?", 1)[1]))
    assert params["name"] == "SENSOR"
    assert params["enable_ota"] == "true"
    assert params["limit"] == "1"
    second = app.get(url)
    assert macs(second) != macs(first)


def test_pages_neither_skip_nor_repeat_while_others_write(store: ConfigStore) -> None:
    """Writers create, rewrite and delete other configs between (and during) page requests."""
    app = webtest.TestApp(create_app(store, Settings()))
    stable = fill(store, 40)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        index = 0
        try:
            while not stop.is_set() and index < 5000:
                extra = str(MacAddress(index * 7919 + 1))  # between the stable MACs
                store.put(extra, {"deviceName": f"churn-{index}"})
                if index % 2:
                    store.delete(extra)
                store.put(stable[index % len(stable)], {"deviceName": f"rewritten-{index}"})
                index += 1
                time.sleep(0.001)  # leave the GIL to the reader now and then
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(5):
            seen = walk(app, "/api/configs?limit=4")
            assert len(seen) == len(set(seen)), "a config was repeated"
            assert seen == sorted(seen, key=lambda m: MacAddress.parse(m).value)
            assert set(stable) <= set(seen), "a config stored throughout was skipped"
    finally:
        stop.set()
        writer.join(30)
    assert not errors


@given(
    st.lists(mac_addresses, unique=True, max_size=30),
    st.lists(mac_addresses, max_size=30),
    st.integers(min_value=1, max_value=6),
)
def test_paging_property_present_throughout_means_once(
    before: list[MacAddress], writes: list[MacAddress], limit: int
) -> None:
    """Whatever changes between pages, a config present throughout is returned exactly once."""
    store = open_store("memory://paging", create=True)
    for address in before:
        store.put(address, {"deviceName": "x"})
    pending = list(writes)
    seen: list[MacAddress] = []
    query = ListQuery(limit=limit)
    deleted: set[MacAddress] = set()
    while True:
        page = query.select(store.listing().summaries)
        seen += [s.mac_address for s in page.summaries]
        if page.next_cursor is None:
            break
        if pending:  # a write between pages: create, or delete what exists
            address = pending.pop()
            if store.exists(address):
                store.delete(address)
                deleted.add(address)
            else:
                store.put(address, {"deviceName": "new"})
        query = ListQuery(limit=limit, after=decode_cursor(page.next_cursor))
    assert len(seen) == len(set(seen))
    assert set(before) - deleted <= set(seen)


# -- filters --------------------------------------------------------------------------------------


def test_filters_match_substrings_and_ota(app: webtest.TestApp, store: ConfigStore) -> None:
    fill(store, 12)
    assert macs(app.get("/api/configs?name=SENSOR-1")) == sorted(
        [mac(1), mac(10), mac(11)], key=lambda m: MacAddress.parse(m).value
    )
    entity = app.get("/api/configs?entity_id=room_1")
    assert macs(entity) == sorted([mac(10)], key=lambda m: MacAddress.parse(m).value)
    on = app.get("/api/configs?enable_ota=true").json["configs"]
    assert {c["mac_address"] for c in on} == {mac(i) for i in range(12) if i % 3 == 0}
    off = app.get("/api/configs?enable_ota=false").json["configs"]
    assert {c["mac_address"] for c in off} == {mac(i) for i in range(12) if i % 3 == 1}
    both = app.get("/api/configs?enable_ota=true&entity_id=sensor.").json["configs"]
    assert {c["mac_address"] for c in both} == {mac(i) for i in range(12) if i % 6 == 0}
    assert app.get("/api/configs?name=%C3%A9").json == {"configs": [], "count": 0}


def test_filtered_pages_follow_the_filter(app: webtest.TestApp, store: ConfigStore) -> None:
    fill(store, 20)
    expected = sorted(
        (mac(i) for i in range(20) if i % 3 == 0), key=lambda m: MacAddress.parse(m).value
    )
    assert walk(app, "/api/configs?enable_ota=true&limit=2") == expected


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        (f"limit={MAX_LIMIT + 1}", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("cursor=nonsense", "cursor"),
        ("cursor=m1.%21%21%21%21%21%21%21%21", "cursor"),
        ("enable_ota=maybe", "enable_ota"),
        ("name=" + "x" * 201, "name"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(
    app: webtest.TestApp, query: str, parameter: str
) -> None:
    answer = app.get(f"/api/configs?{query}", status=400)
    assert answer.json["code"] == "INVALID_QUERY"
    assert answer.json["details"]["parameter"] == parameter


def test_cursors_round_trip_and_reject_strangers() -> None:
    address = MacAddress.parse("aa-bb-cc-dd-ee-ff")
    assert decode_cursor(encode_cursor(address)) == address
    with pytest.raises(InvalidQueryError):
        decode_cursor("aa-bb-cc-dd-ee-ff")
