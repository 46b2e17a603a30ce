"""The device endpoints: exact stored bytes, strong ETags, 304 revalidation, HEAD, never corrupt."""

from __future__ import annotations

from pathlib import Path

import pytest
import webtest

from iot_config_core import ConfigStore, compute_etag, open_store
from iot_config_server import Settings, create_app

MAC = "aa-bb-cc-dd-ee-ff"
PATHS = ["/api/configs/{mac}.json", "/esp32/config/{mac}.json"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "configs"


@pytest.fixture
def store(root: Path) -> ConfigStore:
    return open_store(str(root), create=True)


@pytest.fixture
def app(store: ConfigStore) -> webtest.TestApp:
    return webtest.TestApp(create_app(store, Settings(admin_tokens=("secret-token",))))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("spelling", [MAC, "AA:BB:CC:DD:EE:FF", "aabbccddeeff", "AABB.CCDD.EEFF"])
def test_serves_exact_bytes_with_strong_etag(
    app: webtest.TestApp, root: Path, path: str, spelling: str
) -> None:
    data = b'{\n    "deviceName": "hand edited",   "n": 1.50\n}'
    (root / f"{MAC}.json").write_bytes(data)
    response = app.get(path.format(mac=spelling))  # open although admin tokens are set
    assert response.body == data
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["ETag"] == f'"{compute_etag(data)}"'
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert int(response.headers["Content-Length"]) == len(data)


@pytest.mark.parametrize("path", PATHS)
def test_if_none_match_answers_304_without_body(
    app: webtest.TestApp, store: ConfigStore, path: str
) -> None:
    etag = store.put(MAC, {"v": 1}).etag
    url = path.format(mac=MAC)
    for header in [
        f'"{etag}"',
        f'W/"{etag}"',  # weak comparison
        f'"other", "{etag}"',  # list form
        f' "x" ,W/"{etag}" ',
        "*",
        etag,  # bare tag, as some firmware sends it
    ]:
        response = app.get(url, headers={"If-None-Match": header}, status=304)
        assert response.body == b""
        assert response.headers["ETag"] == f'"{etag}"'
        assert response.headers["Cache-Control"] == "no-cache"
    changed = app.get(url, headers={"If-None-Match": '"stale", W/"older"'}, status=200)
    assert changed.body == store.get_raw(MAC).data


@pytest.mark.parametrize("path", PATHS)
def test_revalidation_sees_edits_by_hand(app: webtest.TestApp, root: Path, path: str) -> None:
    url = path.format(mac=MAC)
    (root / f"{MAC}.json").write_bytes(b'{"v": 1}')
    first = app.get(url)
    (root / f"{MAC}.json").write_bytes(b'{"v": 22}')
    second = app.get(url, headers={"If-None-Match": first.headers["ETag"]}, status=200)
    assert second.body == b'{"v": 22}'
    assert second.headers["ETag"] != first.headers["ETag"]


@pytest.mark.parametrize("path", PATHS)
def test_head(app: webtest.TestApp, store: ConfigStore, path: str) -> None:
    stored = store.put(MAC, {"v": 1})
    url = path.format(mac=MAC)
    response = app.head(url)
    assert response.status_int == 200
    assert response.body == b""
    assert response.headers["ETag"] == f'"{stored.etag}"'
    assert int(response.headers["Content-Length"]) == stored.size
    app.head(url, headers={"If-None-Match": f'"{stored.etag}"'}, status=304)
    assert app.head(path.format(mac="00-00-00-00-00-01"), status=404).body == b""


@pytest.mark.parametrize("path", PATHS)
def test_errors(app: webtest.TestApp, root: Path, path: str) -> None:
    missing = app.get(path.format(mac=MAC), status=404)
    assert missing.json["code"] == "RECORD_NOT_FOUND"
    assert "ETag" not in missing.headers
    invalid = app.get(path.format(mac="nope"), status=400)
    assert invalid.json["code"] == "INVALID_OPERATION"
    (root / f"{MAC}.json").write_bytes(b'{"v": NaN}')
    corrupt = app.get(path.format(mac=MAC), status=422)
    assert corrupt.json["code"] == "CORRUPT_DOCUMENT"
    assert b'{"v": NaN}' not in corrupt.body
    assert "ETag" not in corrupt.headers
    assert "Cache-Control" not in corrupt.headers


@pytest.mark.parametrize("path", PATHS)
def test_corrupt_document_is_not_served_after_it_was_valid(
    app: webtest.TestApp, root: Path, path: str
) -> None:
    url = path.format(mac=MAC)
    (root / f"{MAC}.json").write_bytes(b'{"v": 1}')
    app.get(url, status=200)
    (root / f"{MAC}.json").write_bytes(b'{"v": 1, "v": 2, "padding": 123}')
    assert app.get(url, status=422).json["details"]["reason"] == "duplicate_key"


def test_malformed_if_none_match_is_400(app: webtest.TestApp, store: ConfigStore) -> None:
    store.put(MAC, {"v": 1})
    response = app.get(f"/esp32/config/{MAC}.json", headers={"If-None-Match": '"open'}, status=400)
    assert response.json["code"] == "INVALID_HEADER"
    assert response.json["details"] == {"header": "If-None-Match"}


def test_device_store_outage_is_503(tmp_path: Path) -> None:
    app = webtest.TestApp(create_app(open_store(str(tmp_path / "gone")), Settings()))
    assert app.get(f"/esp32/config/{MAC}.json", status=503).json["code"] == "STORE_UNAVAILABLE"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST", "PATCH"])
@pytest.mark.parametrize("path", PATHS)
def test_device_paths_are_read_only(app: webtest.TestApp, method: str, path: str) -> None:
    response = app.request(path.format(mac=MAC), method=method, expect_errors=True)
    assert response.status_int == 405
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert response.json["code"] == "METHOD_NOT_ALLOWED"
