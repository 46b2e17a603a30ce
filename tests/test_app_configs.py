"""The admin REST routes: list, get, put (with every precondition and bad body), delete."""

from __future__ import annotations

import io
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import webtest

from iot_config_core import ConfigStore, DocumentLimits, open_store
from iot_config_server import Settings, create_app

MAC = "aa-bb-cc-dd-ee-ff"
OTHER = "00-11-22-33-44-55"


@pytest.fixture
def store(disk_or_memory_store: ConfigStore) -> ConfigStore:
    return disk_or_memory_store


def put(app: webtest.TestApp, mac: str, content: Any, status: int = 200, **kw: Any) -> Any:
    headers = kw.pop("headers", {})
    body = {"content": content, **kw}
    return app.put_json(f"/api/configs/{mac}", body, headers=headers, status=status)


def raw_put(
    app: webtest.TestApp,
    body: bytes,
    *,
    content_type: str = "application/json",
    status: int = 400,
    mac: str = MAC,
) -> Any:
    return app.put(
        f"/api/configs/{mac}",
        body,
        headers={"Content-Type": content_type},
        status=status,
    )


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_int == status
    assert response.content_type == "application/json"
    body: dict[str, Any] = response.json
    assert set(body) == {"error", "code", "status", "details", "correlationId"}
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["details"], dict)
    assert body["error"]
    assert body["correlationId"] == response.headers["X-Request-ID"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return body


# -- list ---------------------------------------------------------------------------------------


def test_list_empty(app: webtest.TestApp) -> None:
    response = app.get("/api/configs")
    assert response.json == {"configs": [], "count": 0}
    assert response.content_type == "application/json"


def test_list_is_sorted_with_nulls_for_absent_fields(app: webtest.TestApp) -> None:
    put(app, "FF:FF:FF:00:00:01", {"deviceName": "z", "enableOTA": True, "deviceEntityId": "e1"})
    put(app, "00:00:00:00:00:02", {"deviceName": 5, "enableOTA": "yes"})
    put(app, MAC, {})
    response = app.get("/api/configs")
    assert response.json == {
        "configs": [
            {
                "mac_address": "00-00-00-00-00-02",
                "device_name": None,
                "device_entity_id": None,
                "enable_ota": None,
            },
            {"mac_address": MAC, "device_name": None, "device_entity_id": None, "enable_ota": None},
            {
                "mac_address": "ff-ff-ff-00-00-01",
                "device_name": "z",
                "device_entity_id": "e1",
                "enable_ota": True,
            },
        ],
        "count": 3,
    }


def test_list_sees_changes_made_behind_the_apps_back(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    assert app.get("/api/configs").json["count"] == 0
    store.put(MAC, {"deviceName": "a"})
    assert app.get("/api/configs").json["configs"][0]["device_name"] == "a"
    store.put(MAC, {"deviceName": "b"})
    assert app.get("/api/configs").json["configs"][0]["device_name"] == "b"
    store.delete(MAC)
    assert app.get("/api/configs").json == {"configs": [], "count": 0}


def test_list_skips_corrupt_and_foreign_files(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    store = open_store(str(root), create=True)
    app = webtest.TestApp(create_app(store, Settings()))
    put(app, MAC, {"deviceName": "ok"})
    (root / f"{OTHER}.json").write_text("{broken")
    (root / "notes.txt").write_text("hello")
    assert [c["mac_address"] for c in app.get("/api/configs").json["configs"]] == [MAC]


# -- get ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling", [MAC, "AA:BB:CC:DD:EE:FF", "aabbccddeeff", "aabb.ccdd.eeff", "AA-BB-CC-DD-EE-FF"]
)
def test_get_accepts_any_spelling_and_answers_canonical(
    app: webtest.TestApp, spelling: str
) -> None:
    stored = put(app, MAC, {"deviceName": "kitchen", "enableOTA": False, "x": [1, {"y": None}]})
    response = app.get(f"/api/configs/{spelling}")
    assert response.json == {
        "mac_address": MAC,
        "device_name": "kitchen",
        "device_entity_id": None,
        "enable_ota": False,
        "content": {"deviceName": "kitchen", "enableOTA": False, "x": [1, {"y": None}]},
    }
    assert response.headers["ETag"] == stored.headers["ETag"]


def test_get_absent_is_404_record_not_found(app: webtest.TestApp) -> None:
    body = assert_error(app.get(f"/api/configs/{MAC}", status=404), 404, "RECORD_NOT_FOUND")
    assert body["details"]["mac_address"] == MAC
    assert body["error"] == f"Config {MAC} was not found"  # the old service's words
    # Any spelling of the MAC: the message names the canonical one.
    body = assert_error(app.get("/api/configs/AABBCCDDEEFF", status=404), 404, "RECORD_NOT_FOUND")
    assert body["error"] == f"Config {MAC} was not found"


def test_get_invalid_mac_is_400_invalid_operation(app: webtest.TestApp) -> None:
    body = assert_error(app.get("/api/configs/not-a-mac", status=400), 400, "INVALID_OPERATION")
    assert body["error"] == "Cannot get config because MAC address 'not-a-mac' has invalid format"
    assert body["details"]["value"] == "not-a-mac"


def test_get_corrupt_document_is_422(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    app = webtest.TestApp(create_app(open_store(str(root), create=True), Settings()))
    (root / f"{MAC}.json").write_text('{"a": 1, "a": 2}')
    body = assert_error(app.get(f"/api/configs/{MAC}", status=422), 422, "CORRUPT_DOCUMENT")
    assert body["details"]["reason"] == "duplicate_key"


def test_store_outage_is_503(tmp_path: Path) -> None:
    app = webtest.TestApp(create_app(open_store(str(tmp_path / "missing")), Settings()))
    for response in (
        app.get(f"/api/configs/{MAC}", status=503),
        app.get("/api/configs", status=503),
        app.put_json(f"/api/configs/{MAC}", {"content": {}}, status=503),
        app.delete(f"/api/configs/{MAC}", status=503),
    ):
        assert_error(response, 503, "STORE_UNAVAILABLE")
        assert response.headers["Retry-After"] == "1"
    assert not (tmp_path / "missing").exists()


# -- put ----------------------------------------------------------------------------------------


def test_put_creates_then_replaces_and_answers_like_get(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    created = put(app, "AA:BB:CC:DD:EE:FF", {"deviceName": "a"})
    assert created.json["mac_address"] == MAC
    assert created.json["content"] == {"deviceName": "a"}
    assert created.headers["ETag"] == f'"{store.get(MAC).etag}"'
    replaced = put(app, MAC, {"deviceName": "b", "enableOTA": True})
    assert replaced.headers["ETag"] != created.headers["ETag"]
    assert replaced.json == app.get(f"/api/configs/{MAC}").json
    assert store.get(MAC).content == {"deviceName": "b", "enableOTA": True}


def test_put_allow_overwrite_false(app: webtest.TestApp, store: ConfigStore) -> None:
    put(app, MAC, {"v": 1}, allow_overwrite=False)
    body = assert_error(put(app, MAC, {"v": 2}, status=409, allow_overwrite=False), 409, "CONFLICT")
    assert body["details"]["current_etag"] == store.get(MAC).etag
    assert store.get(MAC).content == {"v": 1}


def test_put_if_match(app: webtest.TestApp, store: ConfigStore) -> None:
    first = put(app, MAC, {"v": 1})
    etag = first.headers["ETag"]
    second = put(app, MAC, {"v": 2}, headers={"If-Match": etag})
    stale = put(app, MAC, {"v": 3}, status=412, headers={"If-Match": etag})
    body = assert_error(stale, 412, "PRECONDITION_FAILED")
    assert f'"{body["details"]["current_etag"]}"' == second.headers["ETag"]
    assert store.get(MAC).content == {"v": 2}
    # a list containing the current tag matches; a weak tag never does (strong comparison)
    put(app, MAC, {"v": 4}, headers={"If-Match": f'"nope", {second.headers["ETag"]}'})
    current = store.get(MAC).etag
    put(app, MAC, {"v": 5}, status=412, headers={"If-Match": f'W/"{current}"'})
    put(app, MAC, {"v": 5}, headers={"If-Match": "*"})


def test_put_if_match_on_absent_is_412(app: webtest.TestApp, store: ConfigStore) -> None:
    put(app, MAC, {"v": 1}, status=412, headers={"If-Match": "*"})
    put(app, MAC, {"v": 1}, status=412, headers={"If-Match": '"abc"'})
    assert not store.exists(MAC)


def test_put_if_none_match_star(app: webtest.TestApp, store: ConfigStore) -> None:
    put(app, MAC, {"v": 1}, headers={"If-None-Match": "*"})
    assert_error(
        put(app, MAC, {"v": 2}, status=412, headers={"If-None-Match": "*"}),
        412,
        "PRECONDITION_FAILED",
    )
    assert store.get(MAC).content == {"v": 1}


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize("value", ['"unterminated', "a b", '"x",,', ""])
def test_put_malformed_precondition_is_400_invalid_header(
    app: webtest.TestApp, store: ConfigStore, header: str, value: str
) -> None:
    body = assert_error(
        put(app, MAC, {"v": 1}, status=400, headers={header: value}), 400, "INVALID_HEADER"
    )
    assert body["details"]["header"] == header
    assert not store.exists(MAC)


def test_put_writing_same_bytes_keeps_etag(app: webtest.TestApp) -> None:
    first = put(app, MAC, {"v": 1})
    assert put(app, MAC, {"v": 1}).headers["ETag"] == first.headers["ETag"]


def test_put_ignores_unknown_envelope_keys(app: webtest.TestApp) -> None:
    response = put(app, MAC, {"v": 1}, mac_address="whatever", extra=[1])
    assert response.json["content"] == {"v": 1}


@pytest.mark.parametrize(
    ("body", "code", "reason", "needle"),
    [
        (b"{not json", "INVALID_BODY", "syntax", "invalid JSON"),
        (b"[1, 2]", "INVALID_BODY", "not_an_object", "array"),
        (b'"text"', "INVALID_BODY", "not_an_object", "string"),
        (b"{}", "INVALID_BODY", "missing_content", "content"),
        (b'{"content": [1]}', "INVALID_BODY", "content_not_object", "array"),
        (b'{"content": null}', "INVALID_BODY", "content_not_object", "null"),
        (b'{"content": "x"}', "INVALID_BODY", "content_not_object", "string"),
        (
            b'{"content": {}, "allow_overwrite": "no"}',
            "INVALID_BODY",
            "allow_overwrite_not_boolean",
            "string",
        ),
        (
            b'{"content": {}, "allow_overwrite": 0}',
            "INVALID_BODY",
            "allow_overwrite_not_boolean",
            "number",
        ),
        (
            b'{"content": {}, "allow_overwrite": null}',
            "INVALID_BODY",
            "allow_overwrite_not_boolean",
            "null",
        ),
        (b'{"content": {"a": 1, "a": 2}}', "INVALID_DOCUMENT", "duplicate_key", "'a'"),
        (b'{"content": {"a": NaN}}', "INVALID_DOCUMENT", "non_finite_number", "NaN"),
        (b'{"content": {"a": Infinity}}', "INVALID_DOCUMENT", "non_finite_number", "Infinity"),
        (b'{"content": {"a": 1e400}}', "INVALID_DOCUMENT", "non_finite_number", "non-finite"),
        (b'{"content": {"a": "\\ud800"}}', "INVALID_DOCUMENT", "lone_surrogate", "surrogate"),
        (
            b'{"content": ' + b'{"a": ' * 70 + b"1" + b"}" * 71,
            "INVALID_DOCUMENT",
            "too_deep",
            "deeper",
        ),
        (b"\xef\xbb\xbf{}", "INVALID_BODY", "byte_order_mark", "byte order mark"),
        (b'{"content": {"a": "\xff"}}', "INVALID_BODY", "invalid_utf8", "UTF-8"),
        (b"", "INVALID_BODY", "empty", "empty"),
    ],
)
def test_put_bad_bodies_are_400_and_write_nothing(
    app: webtest.TestApp, store: ConfigStore, body: bytes, code: str, reason: str, needle: str
) -> None:
    error = assert_error(raw_put(app, body), 400, code)
    assert error["details"]["reason"] == reason
    assert needle in error["error"]
    assert not store.exists(MAC)


def test_put_bad_body_leaves_existing_config_untouched(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    put(app, MAC, {"v": 1})
    before = store.get_raw(MAC)
    raw_put(app, b'{"content": {"a": 1, "a": 2}}')
    assert store.get_raw(MAC).data == before.data


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"],
)
def test_put_wrong_content_type_is_415(
    app: webtest.TestApp, store: ConfigStore, content_type: str
) -> None:
    response = app.put(
        f"/api/configs/{MAC}",
        b'{"content": {}}',
        headers={"Content-Type": content_type} if content_type else {},
        status=415,
    )
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert not store.exists(MAC)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge+json",
    ],
)
def test_put_accepts_json_media_types(app: webtest.TestApp, content_type: str) -> None:
    raw_put(app, b'{"content": {"v": 1}}', content_type=content_type, status=200)


def test_put_invalid_mac_is_400_before_the_body_is_looked_at(app: webtest.TestApp) -> None:
    response = raw_put(app, b"garbage", mac="xx-yy", content_type="text/plain")
    body = assert_error(response, 400, "INVALID_OPERATION")
    assert body["error"] == "Cannot save config because MAC address 'xx-yy' has invalid format"


# -- sizes --------------------------------------------------------------------------------------


@pytest.fixture
def small_app(tmp_path: Path) -> tuple[webtest.TestApp, ConfigStore]:
    store = open_store(str(tmp_path / "small"), create=True, limits=DocumentLimits(max_bytes=1000))
    return webtest.TestApp(create_app(store, Settings(max_document_bytes=1000))), store


def test_document_over_the_core_limit_is_413(
    small_app: tuple[webtest.TestApp, ConfigStore],
) -> None:
    app, store = small_app
    # Small enough to pass the envelope cap, too large once stored (pretty-printed) by the core.
    body = json.dumps({"content": {"k": "x" * 1200}}).encode()
    error = assert_error(raw_put(app, body, status=413), 413, "PAYLOAD_TOO_LARGE")
    assert error["details"]["limit"] == 1000
    assert not store.exists(MAC)


def test_body_over_the_cap_is_413_from_content_length_without_reading(
    small_app: tuple[webtest.TestApp, ConfigStore],
) -> None:
    app, store = small_app

    class Exploding(io.BytesIO):
        def read(self, *_: Any) -> bytes:
            raise AssertionError("body was read")

    request = webtest.TestRequest.blank(
        f"/api/configs/{MAC}",
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    request.environ["CONTENT_LENGTH"] = str(10_000_000)
    request.environ["wsgi.input"] = Exploding()
    response = app.do_request(request, status=413)
    error = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert error["details"]["size"] == 10_000_000
    assert not store.exists(MAC)


class CountingStream(io.BytesIO):
    """A request body stream that tells how much the app read from it."""

    @property
    def position(self) -> int:
        return self.tell()


def chunked(data: bytes, size: int = 4096) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def no_length_request(stream: CountingStream, *, framed: bool) -> webtest.TestRequest:
    request = webtest.TestRequest.blank(
        f"/api/configs/{MAC}",
        method="PUT",
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    request.environ.pop("CONTENT_LENGTH", None)
    request.environ["wsgi.input"] = stream
    if not framed:
        request.environ["wsgi.input_terminated"] = True
    return request


@pytest.mark.parametrize("framed", [True, False], ids=["chunk-framing", "input-terminated"])
def test_chunked_body_over_the_cap_is_413_and_reading_stops(
    small_app: tuple[webtest.TestApp, ConfigStore], framed: bool
) -> None:
    app, store = small_app
    payload = json.dumps({"content": {"k": "x" * 5_000_000}}).encode()
    stream = CountingStream(chunked(payload) if framed else payload)
    response = app.do_request(no_length_request(stream, framed=framed), status=413)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert stream.position < 200_000  # stopped near the cap, not at 5 MB
    assert not store.exists(MAC)


@pytest.mark.parametrize("framed", [True, False], ids=["chunk-framing", "input-terminated"])
def test_chunked_body_within_the_cap_is_stored(
    small_app: tuple[webtest.TestApp, ConfigStore], framed: bool
) -> None:
    app, store = small_app
    payload = json.dumps({"content": {"k": "v" * 100}}).encode()
    stream = CountingStream(chunked(payload, 7) if framed else payload)
    app.do_request(no_length_request(stream, framed=framed), status=200)
    assert store.get(MAC).content == {"k": "v" * 100}


def test_malformed_chunking_is_400(small_app: tuple[webtest.TestApp, ConfigStore]) -> None:
    app, store = small_app
    stream = CountingStream(b"zz\r\n{}\r\n0\r\n\r\n")
    response = app.do_request(no_length_request(stream, framed=True), status=400)
    assert_error(response, 400, "INVALID_BODY")
    assert not store.exists(MAC)


def test_invalid_content_length_is_400(small_app: tuple[webtest.TestApp, ConfigStore]) -> None:
    _, store = small_app
    settings = Settings(max_document_bytes=1000)
    app = webtest.TestApp(create_app(store, settings), lint=False)  # lint rejects the header
    request = webtest.TestRequest.blank(
        f"/api/configs/{MAC}", method="PUT", headers={"Content-Type": "application/json"}
    )
    request.environ["CONTENT_LENGTH"] = "12abc"
    request.environ["wsgi.input"] = CountingStream(b"{}")
    assert_error(app.do_request(request, status=400), 400, "INVALID_HEADER")


# -- delete -------------------------------------------------------------------------------------


def test_delete(app: webtest.TestApp, store: ConfigStore) -> None:
    put(app, MAC, {"v": 1})
    response = app.delete("/api/configs/AA:BB:CC:DD:EE:FF", status=204)
    assert response.body == b""
    assert not store.exists(MAC)
    assert_error(app.delete(f"/api/configs/{MAC}", status=404), 404, "RECORD_NOT_FOUND")


def test_delete_if_match(app: webtest.TestApp, store: ConfigStore) -> None:
    etag = put(app, MAC, {"v": 1}).headers["ETag"]
    put(app, MAC, {"v": 2})
    assert_error(
        app.delete(f"/api/configs/{MAC}", headers={"If-Match": etag}, status=412),
        412,
        "PRECONDITION_FAILED",
    )
    assert store.exists(MAC)
    current = app.get(f"/api/configs/{MAC}").headers["ETag"]
    app.delete(f"/api/configs/{MAC}", headers={"If-Match": current}, status=204)
    assert not store.exists(MAC)


def test_delete_invalid_mac_and_malformed_if_match(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    body = assert_error(app.delete("/api/configs/12345", status=400), 400, "INVALID_OPERATION")
    assert body["error"] == "Cannot delete config because MAC address '12345' has invalid format"
    put(app, MAC, {"v": 1})
    assert_error(
        app.delete(f"/api/configs/{MAC}", headers={"If-Match": '"open'}, status=400),
        400,
        "INVALID_HEADER",
    )
    assert store.exists(MAC)


# -- path safety --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "segment",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "..",
        "%2e%2e",
        "aa-bb-cc-dd-ee-ff%00",
        "%00",
        "a" * 5000,
        "aa-bb-cc-dd-ee-\u0661\u0662",  # Arabic-Indic digits
        "\uff41\uff41-bb-cc-dd-ee-ff",  # fullwidth letters
        "aa:bb:cc:dd:ee:ff:00",
    ],
)
def test_hostile_mac_segments_never_touch_the_filesystem(tmp_path: Path, segment: str) -> None:
    root = tmp_path / "configs"
    app = webtest.TestApp(create_app(open_store(str(root), create=True), Settings()))
    (tmp_path / "secret.json").write_text('{"secret": true}')
    path = urllib.parse.quote(segment, safe="%:") if not segment.isascii() else segment
    for method, url in [
        ("GET", f"/api/configs/{path}"),
        ("GET", f"/api/configs/{path}.json"),
        ("GET", f"/esp32/config/{path}.json"),
        ("DELETE", f"/api/configs/{path}"),
    ]:
        response = app.request(url, method=method, expect_errors=True)
        assert response.status_int in (400, 404), (method, url, response.status)
        # a trailing newline is whitespace the core strips, so that one is a valid MAC (404)
        assert response.json["code"] in ("INVALID_OPERATION", "NOT_FOUND", "RECORD_NOT_FOUND")
        assert b"secret" not in response.body
    response = app.put(
        f"/api/configs/{path}",
        b'{"content": {"x": 1}}',
        headers={"Content-Type": "application/json"},
        expect_errors=True,
    )
    assert response.status_int in (400, 404)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == []


def test_whitespace_around_a_mac_is_the_cores_to_strip(
    app: webtest.TestApp, store: ConfigStore
) -> None:
    response = app.put_json("/api/configs/%20AA:BB:CC:DD:EE:FF%0A", {"content": {"v": 1}})
    assert response.json["mac_address"] == MAC
    assert store.get(MAC).content == {"v": 1}


@pytest.mark.parametrize(
    ("method", "path", "status", "expected"),
    [
        ("GET", f"/api/configs/{MAC}.json", 404, f"Config {MAC} was not found"),
        ("GET", "/api/configs/zz.json", 400, "MAC address 'zz' has invalid format"),
        ("PUT", f"/api/configs/{MAC}", 415, "Cannot save config because the request "),
        ("GET", "/nope", 404, "There is no API route at '/nope'"),
        ("POST", "/api/configs", 405, "Method POST is not allowed here"),
    ],
)
def test_every_message_is_a_sentence_for_admins(
    app: webtest.TestApp, method: str, path: str, status: int, expected: str
) -> None:
    """New messages follow the old service's style: capitalized, no code needed to understand."""
    response = app.request(path, method=method, body=b"x", status=status)
    body = assert_error(response, status, response.json["code"])
    assert expected in body["error"]
    assert body["error"][0].isupper()
    assert body["code"] not in body["error"]
