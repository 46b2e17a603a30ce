"""What every route shares: JSON errors, 404/405, request ids, CORS, auth, health, mounting."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import bottle
import pytest
import webtest

from iot_config_core import ConfigStore, open_store
from iot_config_server import Settings, create_app
from iot_config_server.app import ENDPOINT_CONFIG_KEY
from iot_config_server.endpoints import ENDPOINTS, MAC_RULE
from iot_config_server.logging_setup import RequestIdFilter

MAC = "aa-bb-cc-dd-ee-ff"
TOKEN = "s3cr3t-Token_value"
UI = "https://ui.example.org"


def make(store: ConfigStore, **settings: Any) -> webtest.TestApp:
    return webtest.TestApp(create_app(store, Settings(**settings)))


@pytest.fixture
def app(store: ConfigStore) -> webtest.TestApp:
    return make(store)


def error_code(response: Any) -> str:
    assert response.content_type == "application/json"
    assert set(response.json) == {"error", "code", "status", "details", "correlationId"}
    assert response.json["status"] == response.status_int
    return str(response.json["code"])


# -- unknown routes and wrong methods -----------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/api", "/api/configs/", "/esp32/config/x", "/api/nope", "/%ff"]
)
def test_unknown_routes_are_json_404(app: webtest.TestApp, path: str) -> None:
    response = app.get(path, status=404)
    assert error_code(response) == "NOT_FOUND"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.json["correlationId"] == response.headers["X-Request-ID"]
    assert b"<html" not in response.body.lower()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/api/configs", "GET, HEAD, OPTIONS"),
        ("DELETE", "/api/configs", "GET, HEAD, OPTIONS"),
        ("POST", f"/api/configs/{MAC}", "DELETE, GET, HEAD, OPTIONS, PATCH, PUT"),
        ("PUT", f"/api/configs/{MAC}.json", "GET, HEAD, OPTIONS"),
        ("POST", "/api/health", "GET, HEAD, OPTIONS"),
        ("PUT", "/metrics", "GET, HEAD, OPTIONS"),
        ("DELETE", "/api/openapi.json", "GET, HEAD, OPTIONS"),
    ],
)
def test_wrong_method_is_405_with_allow(
    app: webtest.TestApp, method: str, path: str, allow: str
) -> None:
    response = app.request(path, method=method, expect_errors=True)
    assert response.status_int == 405
    assert response.headers["Allow"] == allow
    assert error_code(response) == "METHOD_NOT_ALLOWED"
    assert response.json["details"]["allowed"] == allow.split(", ")


def test_options_answers_allow(app: webtest.TestApp) -> None:
    response = app.options(f"/api/configs/{MAC}", status=204)
    assert response.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, PUT"
    assert "Access-Control-Allow-Origin" not in response.headers


# -- request ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rid", ["abc-123", "0af7651916cd43dd8448eb211c80319c", "req_1.2:3+4/5=6@x"]
)
def test_sane_request_id_is_echoed(app: webtest.TestApp, rid: str) -> None:
    ok = app.get("/api/configs", headers={"X-Request-ID": rid})
    assert ok.headers["X-Request-ID"] == rid
    missing = app.get(f"/api/configs/{MAC}", headers={"X-Request-ID": rid}, status=404)
    assert missing.headers["X-Request-ID"] == rid
    assert missing.json["correlationId"] == rid
    unknown = app.get("/nowhere", headers={"X-Request-ID": rid}, status=404)
    assert unknown.json["correlationId"] == rid


@pytest.mark.parametrize(
    "rid", ["", "has space", "x" * 129, "new\\nline", 'quote"', "<script>", "ümlaut", "a,b", "a;b"]
)
def test_insane_request_id_is_replaced(app: webtest.TestApp, rid: str) -> None:
    response = app.get(f"/api/configs/{MAC}", headers={"X-Request-ID": rid}, status=404)
    generated = response.headers["X-Request-ID"]
    assert generated != rid
    assert len(generated) == 24
    assert all(c in "0123456789abcdef" for c in generated)
    assert response.json["correlationId"] == generated


def test_generated_request_ids_differ(app: webtest.TestApp) -> None:
    ids = {app.get("/api/health/live").headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20


def test_request_id_is_in_log_lines_of_the_request(
    app: webtest.TestApp, caplog: pytest.LogCaptureFixture
) -> None:
    handler_filter = RequestIdFilter()
    caplog.handler.addFilter(handler_filter)
    with caplog.at_level(logging.INFO):
        app.put_json(f"/api/configs/{MAC}", {"content": {}}, headers={"X-Request-ID": "rid-put-1"})
    records = [r for r in caplog.records if "stored config" in r.getMessage()]
    assert records
    assert all(r.request_id == "rid-put-1" for r in records)  # type: ignore[attr-defined]


# -- unexpected errors --------------------------------------------------------------------------


def test_unexpected_exception_in_a_route_is_json_500_without_traceback(
    store: ConfigStore, caplog: pytest.LogCaptureFixture
) -> None:
    bottle_app = create_app(store, Settings())

    def broken() -> bytes:
        raise RuntimeError("internal detail 0xdeadbeef")

    bottle_app.route("/api/broken", callback=broken)
    app = webtest.TestApp(bottle_app)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.ERROR):
        response = app.get("/api/broken", headers={"X-Request-ID": "boom-1"}, status=500)
    assert error_code(response) == "INTERNAL_ERROR"
    assert b"deadbeef" not in response.body
    assert b"Traceback" not in response.body
    assert response.json["correlationId"] == "boom-1"
    logged = [r for r in caplog.records if r.exc_info]
    assert logged
    assert "deadbeef" in str(logged[0].exc_info[1])  # type: ignore[index]
    assert logged[0].request_id == "boom-1"  # type: ignore[attr-defined]


def test_exception_outside_routes_is_json_500(store: ConfigStore) -> None:
    bottle_app = create_app(store, Settings())

    def failing_hook() -> None:
        raise RuntimeError("hook failed 0xfeed")

    bottle_app.add_hook("before_request", failing_hook)
    app = webtest.TestApp(bottle_app)
    # Bottle also writes the traceback to the server's wsgi.errors log (not to the client).
    response = app.get("/api/health/live", expect_errors=True)
    assert response.status_int == 500
    assert error_code(response) == "INTERNAL_ERROR"
    assert b"feed" not in response.body


# -- CORS ---------------------------------------------------------------------------------------


def test_cors_for_configured_origin(store: ConfigStore) -> None:
    app = make(store, cors_origins=(UI,))
    response = app.get("/api/configs", headers={"Origin": UI})
    assert response.headers["Access-Control-Allow-Origin"] == UI
    assert "ETag" in response.headers["Access-Control-Expose-Headers"]
    assert response.headers["Vary"] == "Origin"
    error = app.get(f"/api/configs/{MAC}", headers={"Origin": UI}, status=404)
    assert error.headers["Access-Control-Allow-Origin"] == UI
    unknown = app.get("/nope", headers={"Origin": UI}, status=404)
    assert unknown.headers["Access-Control-Allow-Origin"] == UI


def test_cors_ignores_other_origins(store: ConfigStore) -> None:
    app = make(store, cors_origins=(UI,))
    response = app.get("/api/configs", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert (
        "Access-Control-Allow-Origin"
        not in make(store).get("/api/configs", headers={"Origin": UI}).headers
    )


def test_cors_preflight(store: ConfigStore) -> None:
    app = make(store, cors_origins=(UI,), admin_tokens=(TOKEN,))
    response = app.options(
        f"/api/configs/{MAC}",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type, if-match, authorization",
        },
        status=204,
    )  # no token needed: browsers never send credentials on a preflight
    assert response.headers["Access-Control-Allow-Origin"] == UI
    assert (
        response.headers["Access-Control-Allow-Methods"] == "DELETE, GET, HEAD, OPTIONS, PATCH, PUT"
    )
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"content-type", "if-match", "if-none-match", "authorization", "x-request-id"} <= allowed
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    refused = app.options(
        f"/api/configs/{MAC}",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
        status=204,
    )
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_cors_wildcard(store: ConfigStore) -> None:
    app = make(store, cors_origins=("*",))
    response = app.get("/api/configs", headers={"Origin": "https://anything.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# -- auth ---------------------------------------------------------------------------------------

ADMIN = [
    ("GET", "/api/configs"),
    ("GET", f"/api/configs/{MAC}"),
    ("PUT", f"/api/configs/{MAC}"),
    ("PATCH", f"/api/configs/{MAC}"),
    ("DELETE", f"/api/configs/{MAC}"),
    ("GET", "/api/schemas"),
    ("PUT", "/api/schemas/sensor"),
    ("GET", "/api/validation"),
]
OPEN = [
    f"/api/configs/{MAC}.json",
    f"/esp32/config/{MAC}.json",
    "/api/health",
    "/api/health/live",
    "/api/health/ready",
    "/metrics",
    "/api/openapi.json",
    "/api/docs",
]


def test_admin_routes_match_the_table() -> None:
    assert sorted((e.method, e.rule) for e in ENDPOINTS if e.admin) == sorted(
        [
            ("GET", "/api/configs"),
            ("GET", MAC_RULE),
            ("PUT", MAC_RULE),
            ("PATCH", MAC_RULE),
            ("DELETE", MAC_RULE),
            ("GET", "/api/schemas"),
            ("GET", "/api/schemas/<schema>"),
            ("PUT", "/api/schemas/<schema>"),
            ("DELETE", "/api/schemas/<schema>"),
            ("GET", "/api/validation"),
            ("GET", "/api/configs/<mac>/history"),
            ("GET", "/api/configs/<mac>/history/<etag>"),
            ("GET", "/api/configs/<mac>/diff"),
            ("POST", "/api/configs/<mac>/rollback"),
        ]
    )


@pytest.mark.parametrize(("method", "path"), ADMIN)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic czNjcjN0",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer \xe9",
    ],
)
def test_admin_routes_refuse_without_valid_token(
    store: ConfigStore,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    authorization: str | None,
) -> None:
    store.put(MAC, {"v": 1})
    app = make(store, admin_tokens=(TOKEN, "second-token"))
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    with caplog.at_level(logging.DEBUG):
        response = app.request(
            path, method=method, headers=headers, body=b'{"content": {"v": 2}}', expect_errors=True
        )
    assert response.status_int == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert store.get(MAC).content == {"v": 1}
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("token", [TOKEN, "second-token"])
def test_admin_routes_accept_any_configured_token(store: ConfigStore, token: str) -> None:
    app = make(store, admin_tokens=(TOKEN, "second-token"))
    auth = {"Authorization": f"Bearer {token}"}
    app.put_json(f"/api/configs/{MAC}", {"content": {"v": 2}}, headers=auth)
    assert app.get("/api/configs", headers=auth).json["count"] == 1
    assert app.get(f"/api/configs/{MAC}", headers={"Authorization": f"bearer {token}"}).json[
        "content"
    ] == {"v": 2}
    app.delete(f"/api/configs/{MAC}", headers=auth, status=204)


@pytest.mark.parametrize("path", OPEN)
def test_device_health_metrics_and_docs_stay_open(store: ConfigStore, path: str) -> None:
    store.put(MAC, {"v": 1})
    app = make(store, admin_tokens=(TOKEN,))
    assert app.get(path).status_int == 200


def test_without_tokens_everything_is_open(store: ConfigStore) -> None:
    app = make(store)
    app.put_json(f"/api/configs/{MAC}", {"content": {}})
    assert app.get("/api/configs").json["count"] == 1
    assert not Settings().auth_enabled
    assert Settings(admin_tokens=(TOKEN,)).auth_enabled


# -- health -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/health", "/api/health/ready"])
def test_health_checks_the_store(tmp_path: Path, path: str) -> None:
    root = tmp_path / "configs"
    store = open_store(str(root), create=True)
    app = make(store)
    healthy = app.get(path)
    assert healthy.json == {"status": "healthy"}
    assert healthy.headers["Cache-Control"] == "no-store"
    root.rename(tmp_path / "moved")
    sick = app.get(path, status=503)
    assert sick.json["status"] == "unhealthy"
    assert set(sick.json) == {"status", "reason"}
    assert sick.json["reason"]
    assert list((tmp_path / "moved").iterdir()) == []  # the probe leaves nothing behind


def test_liveness_never_touches_the_store(tmp_path: Path) -> None:
    app = make(open_store(str(tmp_path / "never-created")))
    assert app.get("/api/health/live").json == {"status": "healthy"}
    assert app.get("/api/health", status=503).json["status"] == "unhealthy"
    assert not (tmp_path / "never-created").exists()


# -- apps side by side, mounted -----------------------------------------------------------------


def test_two_apps_in_one_process_stay_separate(tmp_path: Path) -> None:
    store_a = open_store(str(tmp_path / "a"), create=True)
    store_b = open_store("memory://b", create=True)
    app_a = make(store_a, admin_tokens=(TOKEN,))
    app_b = make(store_b)
    app_a.put_json(
        f"/api/configs/{MAC}",
        {"content": {"who": "a"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    app_b.put_json(f"/api/configs/{MAC}", {"content": {"who": "b"}})
    assert app_a.get(f"/esp32/config/{MAC}.json").json == {"who": "a"}
    assert app_b.get(f"/esp32/config/{MAC}.json").json == {"who": "b"}
    app_b.get("/api/configs")  # open on b, closed on a
    app_a.get("/api/configs", status=401)
    metrics_a = app_a.get("/metrics").text
    metrics_b = app_b.get("/metrics").text
    assert 'method="PUT",route="/api/configs/<mac>",status="200"} 1.0' in metrics_a
    assert 'route="/api/configs",status="401"} 1.0' in metrics_a
    assert 'route="/api/configs",status="401"' not in metrics_b


def test_mounted_into_a_parent_bottle_app(store: ConfigStore) -> None:
    parent = bottle.Bottle()
    parent.mount("/iot/", create_app(store, Settings()))
    app = webtest.TestApp(parent)
    app.put_json(f"/iot/api/configs/{MAC}", {"content": {"v": 1}})
    assert app.get(f"/iot/esp32/config/{MAC}.json").json == {"v": 1}
    assert app.get("/iot/api/configs").json["count"] == 1
    response = app.get("/iot/api/configs/zz", status=400)
    assert response.json["code"] == "INVALID_OPERATION"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert app.get("/iot/api/openapi.json").json["servers"] == [{"url": "/iot"}]
    metrics = app.get("/iot/metrics").text
    assert 'route="/api/configs/<mac>"' in metrics  # labels are the app's templates, unprefixed
    docs = app.get("/iot/api/docs")
    assert 'src="docs/assets/init.js"' in docs.text
    app.get("/iot/api/docs/assets/init.js")


def test_behind_a_reverse_proxy_prefix(store: ConfigStore) -> None:
    inner = create_app(store, Settings())

    def proxy(environ: dict[str, Any], start_response: Any) -> Any:
        """What a proxy/WSGI container does for an app published at /proxy."""
        path = environ["PATH_INFO"]
        if not path.startswith("/proxy/"):
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
            return [b"outside the prefix"]
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/proxy"
        environ["PATH_INFO"] = path[len("/proxy") :]
        return inner(environ, start_response)

    app = webtest.TestApp(proxy)
    app.put_json(f"/proxy/api/configs/{MAC}", {"content": {"v": 1}})
    assert app.get("/proxy/api/openapi.json").json["servers"] == [{"url": "/proxy"}]
    assert app.get(f"/proxy/esp32/config/{MAC}.json").json == {"v": 1}
    assert app.get("/proxy/nothing", status=404).json["code"] == "NOT_FOUND"
    assert "swagger-ui-bundle.js" in app.get("/proxy/api/docs").text


def test_every_route_carries_its_endpoint(store: ConfigStore) -> None:
    for route in create_app(store, Settings()).routes:
        assert route.config[ENDPOINT_CONFIG_KEY].rule == route.rule


def test_routes_added_to_the_app_get_json_errors_and_headers(store: ConfigStore) -> None:
    bottle_app = create_app(store, Settings())

    def teapot() -> None:
        bottle.abort(404, "nothing here")

    def moved() -> None:
        bottle.redirect("/api/health/live")

    bottle_app.route("/extra/missing", callback=teapot)
    bottle_app.route("/extra/moved", callback=moved)
    app = webtest.TestApp(bottle_app)
    missing = app.get("/extra/missing", status=404)
    assert error_code(missing) == "NOT_FOUND"
    redirected = app.get("/extra/moved", status=302)  # HTTP/1.0 request in WebTest
    assert redirected.headers["Location"].endswith("/api/health/live")
    assert redirected.headers["X-Content-Type-Options"] == "nosniff"
    metrics = app.get("/metrics").text
    assert 'route="/extra/missing",status="404"} 1.0' in metrics
    assert 'route="<unmatched>"' not in metrics
