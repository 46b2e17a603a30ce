"""The history routes: list versions, one version, diff, rollback; named admin tokens as authors."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest
import webtest

from iot_config_core import ConfigStore
from iot_config_server import Settings, create_app

MAC = "aa-bb-cc-dd-ee-ff"
ALICE = "alice-secret-token-1"
CI = "ci-secret-token-2"
OLD = "unnamed-token-3"


@pytest.fixture
def store(disk_or_memory_store: ConfigStore) -> ConfigStore:
    return disk_or_memory_store


@pytest.fixture
def app(store: ConfigStore) -> webtest.TestApp:
    settings = Settings(admin_tokens=(f"alice:{ALICE}", f"ci:{CI}", OLD))
    return webtest.TestApp(create_app(store, settings))


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def put(app: webtest.TestApp, content: Any, token: str = ALICE, **headers: str) -> Any:
    return app.put_json(f"/api/configs/{MAC}", {"content": content}, headers=auth(token, **headers))


def test_history_names_the_token_and_request(app: webtest.TestApp) -> None:
    first = put(app, {"v": 1})
    second = put(app, {"v": 2}, CI, **{"X-Request-ID": "change-42"})
    put(app, {"v": 3}, OLD)
    body = app.get(f"/api/configs/{MAC}/history", headers=auth(ALICE)).json
    assert body["mac_address"] == MAC
    assert body["count"] == 3
    assert body["limit"] == 20
    versions = body["versions"]
    assert [(v["author"], v["source"]) for v in versions] == [
        (None, "api"),
        ("ci", "api"),
        ("alice", "api"),
    ]
    assert versions[1]["request_id"] == "change-42"
    assert versions[1]["etag"] == second.headers["ETag"].strip('"')
    assert versions[2]["previous"] is None
    assert versions[2]["etag"] == first.headers["ETag"].strip('"')
    assert set(versions[0]) == {
        "etag", "previous", "saved_at", "size", "author", "source", "request_id", "deleted"
    }  # fmt: skip


def test_version_diff_and_rollback(app: webtest.TestApp) -> None:
    good = put(app, {"name": "lamp", "ota": False})
    good_etag = good.headers["ETag"]
    bad = put(app, {"name": "lamp", "ota": True, "url": "http://x"})
    version = app.get(f"/api/configs/{MAC}/history/{good_etag.strip(chr(34))}", headers=auth(ALICE))
    assert version.json["content"] == {"name": "lamp", "ota": False}
    assert version.headers["ETag"] == good_etag
    patch = app.get(f"/api/configs/{MAC}/diff", {"from": good_etag.strip('"')}, headers=auth(ALICE))
    assert patch.content_type == "application/json-patch+json"
    assert jsonpatch.apply_patch({"name": "lamp", "ota": False}, patch.json) == bad.json["content"]
    stale = app.post_json(
        f"/api/configs/{MAC}/rollback",
        {"etag": good_etag.strip('"')},
        headers=auth(ALICE, **{"If-Match": good_etag}),
        status=412,
    )
    assert stale.json["code"] == "PRECONDITION_FAILED"
    rolled = app.post_json(
        f"/api/configs/{MAC}/rollback",
        {"etag": good_etag.strip('"')},
        headers=auth(ALICE, **{"If-Match": bad.headers["ETag"]}),
    )
    assert rolled.headers["ETag"] == good_etag
    assert rolled.json["content"] == {"name": "lamp", "ota": False}
    assert app.get(f"/api/configs/{MAC}", headers=auth(ALICE)).json["content"]["ota"] is False


def test_rollback_restores_a_deleted_config(app: webtest.TestApp) -> None:
    stored = put(app, {"v": 1})
    app.delete(f"/api/configs/{MAC}", headers=auth(CI))
    versions = app.get(f"/api/configs/{MAC}/history", headers=auth(ALICE)).json["versions"]
    assert [(v["deleted"], v["author"]) for v in versions] == [(True, "ci"), (False, "alice")]
    etag = stored.headers["ETag"].strip('"')
    restored = app.post_json(f"/api/configs/{MAC}/rollback", {"etag": etag}, headers=auth(ALICE))
    assert restored.json["content"] == {"v": 1}
    assert app.get(f"/api/configs/{MAC}.json").json == {"v": 1}


def test_bad_history_requests_are_precise(app: webtest.TestApp) -> None:
    missing = app.get(f"/api/configs/{MAC}/history", headers=auth(ALICE), status=404)
    assert missing.json["code"] == "RECORD_NOT_FOUND"
    put(app, {"v": 1})
    unknown = app.get(f"/api/configs/{MAC}/history/{'0' * 32}", headers=auth(ALICE), status=404)
    assert unknown.json["code"] == "VERSION_NOT_FOUND"
    no_from = app.get(f"/api/configs/{MAC}/diff", headers=auth(ALICE), status=400)
    assert no_from.json["code"] == "BAD_REQUEST"
    for body in (b"[]", b'{"etag": 1}', b"{", b'{"etag": ""}'):
        answer = app.post(
            f"/api/configs/{MAC}/rollback",
            body,
            headers=auth(ALICE, **{"Content-Type": "application/json"}),
            status=400,
        )
        assert answer.json["code"] == "INVALID_BODY"
    rollback = app.post_json(
        f"/api/configs/{MAC}/rollback", {"etag": "f" * 32}, headers=auth(ALICE), status=404
    )
    assert rollback.json["code"] == "VERSION_NOT_FOUND"
    bad_mac = app.get("/api/configs/nope/history", headers=auth(ALICE), status=400)
    assert bad_mac.json["code"] == "INVALID_OPERATION"
    assert app.get(f"/api/configs/{MAC}", headers=auth(ALICE)).json["content"] == {"v": 1}


@pytest.mark.parametrize("path", [f"/api/configs/{MAC}/history", f"/api/configs/{MAC}/diff?from=x"])
def test_history_routes_need_an_admin_token(app: webtest.TestApp, path: str) -> None:
    assert app.get(path, status=401).json["code"] == "UNAUTHORIZED"
    assert app.get(path, headers=auth("wrong"), status=401).json["code"] == "UNAUTHORIZED"


def test_history_is_never_served_or_listed(app: webtest.TestApp, store: ConfigStore) -> None:
    put(app, {"v": 1})
    put(app, {"v": 2})
    listed = app.get("/api/configs", headers=auth(ALICE)).json
    assert [c["mac_address"] for c in listed["configs"]] == [MAC]
    app.get("/api/configs/.history.json", status=400)
    app.get("/esp32/config/.history.json", status=400)


def test_a_token_with_a_colon_from_before_names_still_works(store: ConfigStore) -> None:
    # "legacy:abc" was a valid unnamed token before names existed: the whole entry still
    # authenticates (unnamed), and so does its token part (named "legacy").
    app = webtest.TestApp(create_app(store, Settings(admin_tokens=("legacy:abc",))))
    put(app, {"v": 1}, "legacy:abc")
    put(app, {"v": 2}, "abc")
    versions = app.get(f"/api/configs/{MAC}/history", headers=auth("abc")).json["versions"]
    assert [v["author"] for v in versions] == ["legacy", None]
    app.get(f"/api/configs/{MAC}/history", headers=auth("legacy"), status=401)


def test_without_tokens_the_api_records_no_author(store: ConfigStore) -> None:
    app = webtest.TestApp(create_app(store, Settings()))
    app.put_json(f"/api/configs/{MAC}", {"content": {"v": 1}})
    (version,) = app.get(f"/api/configs/{MAC}/history").json["versions"]
    assert (version["author"], version["source"]) == (None, "api")
