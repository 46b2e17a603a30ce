"""The device endpoints: exact stored bytes, strong ETags, 304 revalidation, HEAD, never corrupt."""

from __future__ import annotations

import json
import logging
import wsgiref.util
from pathlib import Path

import bottle
import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families

from iot_config_core import ConfigStore, compute_etag, open_store
from iot_config_server import Settings, create_app
from iot_config_server.logging_setup import RequestIdFilter

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


def test_answer_headers_exactly(app: webtest.TestApp, store: ConfigStore) -> None:
    stored = store.put(MAC, {"v": 1})
    url = f"/esp32/config/{MAC}.json"
    tag = f'"{stored.etag}"'
    common = [("X-Request-ID", "dev-1"), ("X-Content-Type-Options", "nosniff")]
    for method in ("GET", "HEAD"):
        ok = app.request(url, method=method, headers={"X-Request-ID": "dev-1"})
        assert ok.headerlist == [
            ("ETag", tag),
            ("Cache-Control", "no-cache"),
            ("Content-Type", "application/json"),
            *common,
            ("Content-Length", str(stored.size)),
        ]
        fresh = app.request(
            url, method=method, headers={"X-Request-ID": "dev-1", "If-None-Match": tag}
        )
        assert fresh.status_int == 304
        assert fresh.headerlist == [("ETag", tag), ("Cache-Control", "no-cache"), *common]


def test_request_id_is_generated_or_kept_and_in_error_bodies(app: webtest.TestApp) -> None:
    url = f"/esp32/config/{MAC}.json"
    generated = app.get(url, status=404)
    rid = generated.headers["X-Request-ID"]
    assert len(rid) == 24
    assert generated.json["correlationId"] == rid
    for sent, kept in (("abc-123", "abc-123"), ("has space", None)):
        answer = app.get(url, headers={"X-Request-ID": sent}, status=404)
        assert (answer.headers["X-Request-ID"] == sent) == (kept is not None)
        assert answer.json["correlationId"] == answer.headers["X-Request-ID"]


@pytest.mark.parametrize("cors", [("https://ui.example.org",), ("*",)])
def test_cors_headers(store: ConfigStore, cors: tuple[str, ...]) -> None:
    store.put(MAC, {"v": 1})
    app = webtest.TestApp(create_app(store, Settings(cors_origins=cors)))
    url = f"/esp32/config/{MAC}.json"
    ui = "https://ui.example.org"
    plain = app.get(url).headerlist
    assert (("Vary", "Origin") in plain) == (cors != ("*",))  # a shared cache must not mix origins
    assert not any(name.startswith("Access-Control") for name, _ in plain)
    allowed = app.get(url, headers={"Origin": ui})
    assert allowed.headers["Access-Control-Allow-Origin"] == (ui if cors != ("*",) else "*")
    assert "ETag" in allowed.headers["Access-Control-Expose-Headers"]
    other = app.get(url, headers={"Origin": "https://elsewhere.example"})
    if cors == ("*",):
        assert other.headers["Access-Control-Allow-Origin"] == "*"
    else:
        assert "Access-Control-Allow-Origin" not in other.headers
        assert other.headers["Vary"] == "Origin"
    missing = app.get("/esp32/config/00-00-00-00-00-01.json", headers={"Origin": ui}, status=404)
    assert "Access-Control-Allow-Origin" in missing.headers


def counts(app: webtest.TestApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = {}
    for family in text_string_to_metric_families(app.get("/metrics").text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def test_outage_is_answered_logged_with_the_request_id_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "configs"
    store = open_store(str(root), create=True)
    app = webtest.TestApp(create_app(store, Settings()))
    root.rename(tmp_path / "gone")
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.ERROR):
        answer = app.get(f"/esp32/config/{MAC}.json", headers={"X-Request-ID": "out-1"}, status=503)
    assert answer.headers["Retry-After"] == "1"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "ETag" not in answer.headers
    logged = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.request_id for r in logged] == ["out-1"]  # type: ignore[attr-defined]
    found = counts(app)
    route = (("route", "/esp32/config/<mac>.json"),)
    request = (("method", "GET"), ("route", "/esp32/config/<mac>.json"), ("status", "503"))
    assert found[("iot_config_http_requests_total", request)] == 1
    assert found[("iot_config_http_request_duration_seconds_count", route)] == 1
    outcome = (("operation", "get_raw"), ("outcome", "store_unavailable"))
    assert found[("iot_config_config_operations_total", outcome)] == 1


def test_odd_paths_get_json_errors(app: webtest.TestApp) -> None:
    for path, status in (("/esp32/config/.json", 404), (f"/esp32/config/x/{MAC}.json", 404)):
        answer = app.get(path, status=status)
        assert answer.content_type == "application/json"
        assert answer.json["correlationId"] == answer.headers["X-Request-ID"]


def test_non_ascii_path_is_an_invalid_mac(store: ConfigStore) -> None:
    """UTF-8 bytes in the path, as a WSGI server passes them (webtest cannot send them)."""
    environ: dict[str, object] = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/esp32/config/\xc3\xa9.json"
    started: list[str] = []
    body = create_app(store, Settings())(
        environ, lambda status, _headers, _exc=None: started.append(status)
    )
    assert started == ["400 Bad Request"]
    assert json.loads(b"".join(body))["code"] == "INVALID_OPERATION"


@pytest.mark.parametrize("headers", [{}, {"X-Request-ID": "m-1"}])
def test_behind_a_prefix_or_mounted_in_a_parent_app(
    store: ConfigStore, headers: dict[str, str]
) -> None:
    """Behind a proxy (SCRIPT_NAME) or merged into a parent Bottle app, the answers are alike."""
    store.put(MAC, {"v": 1})
    direct = webtest.TestApp(create_app(store, Settings()))
    proxied = webtest.TestApp(create_app(store, Settings()), extra_environ={"SCRIPT_NAME": "/p"})
    parent = bottle.Bottle()
    parent.mount("/iot/", create_app(store, Settings()))
    mounted = webtest.TestApp(parent)
    tag = direct.get(f"/esp32/config/{MAC}.json").headers["ETag"]
    for method in ("GET", "HEAD"):
        for extra in ({}, {"If-None-Match": tag}):
            for mac in (MAC, "00-00-00-00-00-01", "zz"):
                path = f"/esp32/config/{mac}.json"
                sent = {**headers, **extra}
                want = direct.request(path, method=method, headers=sent, expect_errors=True)
                for got in (
                    proxied.request(path, method=method, headers=sent, expect_errors=True),
                    mounted.request("/iot" + path, method=method, headers=sent, expect_errors=True),
                ):
                    assert got.status == want.status
                    assert _comparable(got) == _comparable(want)


def _comparable(answer: webtest.TestResponse) -> tuple[dict[str, str], bytes]:
    """Headers by lower-case name and the body, with a generated request id blanked out."""
    headers = {name.lower(): value for name, value in answer.headerlist}
    rid = headers["x-request-id"]
    body = answer.body
    if rid != "m-1":
        headers["x-request-id"] = "<generated>"
        body = body.replace(rid.encode(), b"<generated>")
    return headers, body
