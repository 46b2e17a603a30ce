"""The device-document cache: bounded by a setting, its hits and misses counted in /metrics."""

from __future__ import annotations

import re
from pathlib import Path

import webtest

from iot_config_core import MacAddress, open_store
from iot_config_core.store import RAW_CACHE_ENTRY_OVERHEAD
from iot_config_server import Settings, create_app


def lookups(app: webtest.TestApp, result: str) -> float:
    text = app.get("/metrics").text
    found = re.search(
        rf'^iot_config_device_cache_lookups_total\{{result="{result}"\}} (\S+)$', text, re.MULTILINE
    )
    assert found is not None, text
    return float(found.group(1))


def test_the_cache_never_holds_more_than_its_bound(tmp_path: Path) -> None:
    document = {"deviceName": "x" * 200}
    probe = open_store(str(tmp_path / "probe"), create=True)
    size = probe.put("00-00-00-00-00-01", document).size
    bound = 5 * (size + RAW_CACHE_ENTRY_OVERHEAD)
    store = open_store(str(tmp_path / "configs"), create=True, device_cache_bytes=bound)
    macs = [MacAddress(index + 1) for index in range(20)]
    for mac in macs:
        store.put(mac, document)
    for mac in macs:
        store.get_raw(mac)
    stats = store.device_cache
    assert stats.max_bytes == bound
    assert stats.bytes <= bound
    assert stats.entries == 5
    # the most recently polled are the ones kept
    before = store.device_cache.hits
    for mac in macs[-5:]:
        store.get_raw(mac)
    assert store.device_cache.hits == before + 5


def test_a_zero_bound_keeps_nothing_and_every_poll_reads(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "configs"), create=True, device_cache_bytes=0)
    store.put("00-00-00-00-00-01", {"deviceName": "x"})
    for _ in range(3):
        assert store.get_raw("00-00-00-00-00-01").data
    stats = store.device_cache
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (0, 3, 0, 0)


def test_hits_and_misses_are_metrics(tmp_path: Path) -> None:
    settings = Settings(store_url=str(tmp_path / "configs"), device_cache_bytes=1 << 20)
    store = settings.open_store(create=True)
    assert store.device_cache.max_bytes == 1 << 20
    app = webtest.TestApp(create_app(store, settings))
    store.put("00-00-00-00-00-01", {"deviceName": "x"})
    path = "/esp32/config/00-00-00-00-00-01.json"
    app.get(path)  # read from disk: a miss
    app.get(path)
    app.get(path)
    assert lookups(app, "miss") == 1
    assert lookups(app, "hit") == 2
    store.put("00-00-00-00-00-01", {"deviceName": "changed"})
    assert app.get(path).json == {"deviceName": "changed"}  # a new version is never a hit
    assert lookups(app, "miss") == 2


def test_the_bound_is_a_setting_from_the_environment() -> None:
    settings = Settings.from_env({"IOT_CONFIG_DEVICE_CACHE_BYTES": "4096"})
    assert settings.device_cache_bytes == 4096
    assert Settings.from_env({"IOT_CONFIG_DEVICE_CACHE_BYTES": "0"}).device_cache_bytes == 0


def test_an_unchanged_poll_is_answered_from_the_listing_without_a_read(tmp_path: Path) -> None:
    """A fleet larger than the cache: a 304 still costs one stat, never a read."""
    root = tmp_path / "configs"
    settings = Settings(store_url=str(root), device_cache_bytes=0)
    store = settings.open_store(create=True)
    app = webtest.TestApp(create_app(store, settings))
    store.put("00-00-00-00-00-01", {"deviceName": "x"})
    path = "/esp32/config/00-00-00-00-00-01.json"
    etag = app.get(path).headers["ETag"]
    app.get(path, headers={"If-None-Match": etag}, status=304)  # before any listing: a read
    assert (store.device_cache.hits, store.device_cache.misses) == (0, 2)
    app.get("/api/configs")
    for _ in range(3):
        app.get(path, headers={"If-None-Match": etag}, status=304)
    assert (store.device_cache.hits, store.device_cache.misses) == (3, 2)
    assert (lookups(app, "hit"), lookups(app, "miss")) == (3, 2)
    # a hand edit in place since the listing: the version differs, so the file is read again
    (root / "00-00-00-00-00-01.json").write_text('{"deviceName": "edited by hand"}')
    fresh = app.get(path, headers={"If-None-Match": etag})
    assert fresh.status_int == 200
    assert fresh.json == {"deviceName": "edited by hand"}
    app.get(path, headers={"If-None-Match": '"open'}, status=400)
