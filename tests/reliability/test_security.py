"""The security properties `docs/security.md` claims, checked against the real server.

- admin tokens are compared in constant time against every configured token (no early exit) and
  never appear in logs, even at DEBUG;
- ``X-Request-ID`` is sanitised before it reaches a log line or a response header;
- every answer carries ``X-Content-Type-Options: nosniff``;
- the docs page loads no script from another origin and no inline script, under a CSP that
  forbids both;
- the server binds 127.0.0.1 unless told otherwise.
(Path traversal is covered by the hostile-MAC cases in ``test_server_bad_input.py``.)
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import webtest
from support import JSON_HEADERS, ServerProcess, put_body

from iot_config_core import open_store
from iot_config_server.app import create_app
from iot_config_server.settings import Settings

TOKENS = ("s3cr3t-token-alpha-0123456789", "s3cr3t-token-bravo-9876543210")
MAC = "02-00-00-00-04-01"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("security")
    (base / "configs").mkdir()
    env = {"IOT_CONFIG_ADMIN_TOKENS": ",".join(TOKENS), "IOT_CONFIG_LOG_LEVEL": "DEBUG"}
    proc = ServerProcess("--store", str(base / "configs"), log_path=base / "server.log", env=env)
    yield proc
    proc.stop()


def test_admin_routes_need_a_token_device_routes_do_not(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKENS[1]}"}
    answer = server.request(
        "PUT", f"/api/configs/{MAC}", put_body({"a": 1}), {**JSON_HEADERS, **auth}
    )
    assert answer[0] == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKENS[0]}"},
                    {"Authorization": f"Bearer {TOKENS[0][:-1]}"}):  # fmt: skip
        for method, path, body in (
            ("GET", "/api/configs", None),
            ("GET", f"/api/configs/{MAC}", None),
            ("PUT", f"/api/configs/{MAC}", put_body({"a": 2})),
            ("DELETE", f"/api/configs/{MAC}", None),
        ):
            status, response_headers, data = server.request(
                method, path, body, {**JSON_HEADERS, **headers}
            )
            assert status == 401, (method, path, headers, status)
            assert json.loads(data)["code"] == "UNAUTHORIZED"
            assert response_headers["www-authenticate"].startswith("Bearer")
    # Devices, health and metrics stay open: firmware has no token to send.
    for path in (f"/esp32/config/{MAC}.json", "/api/health/live", "/api/health/ready", "/metrics"):
        assert server.request("GET", path)[0] == 200, path
    assert json.loads(server.request("GET", f"/api/configs/{MAC}", None, auth)[2])["content"] == {
        "a": 1
    }


def test_tokens_never_logged(server: ServerProcess) -> None:
    for token in (*TOKENS, "wrong-token-guess", TOKENS[0][:-1]):
        server.request("GET", "/api/configs", None, {"Authorization": f"Bearer {token}"})
        server.request("GET", "/api/nope", None, {"Authorization": f"Bearer {token}"})
    log = server.log()
    assert log.strip(), "DEBUG logging produced nothing: the check would prove nothing"
    for secret in (*TOKENS, "wrong-token-guess", TOKENS[0][:-1]):
        assert secret not in log


def test_tokens_compared_in_constant_time_against_every_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each configured token goes through hmac.compare_digest, even after a match."""
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    settings = Settings(store_url=str(tmp_path), admin_tokens=TOKENS)
    app = webtest.TestApp(create_app(open_store(str(tmp_path), create=True), settings))
    for presented, status in ((TOKENS[0], 200), (TOKENS[1], 200), ("x" * 29, 401), ("", 401)):
        calls.clear()
        headers = {"Authorization": f"Bearer {presented}"} if presented else {}
        app.get("/api/configs", headers=headers, status=status)
        if presented:
            assert sorted(b for _, b in calls) == sorted(t.encode() for t in TOKENS)
            assert all(a == presented.encode() for a, _ in calls)
    assert "s3cr3t" not in repr(settings)


@pytest.mark.parametrize(
    "value",
    ["with space", "x" * 200, "semi;colon", 'quote"d', "ümlaut", "tab\there", "INJ%0d%0aX: 1"],
)
def test_request_id_sanitised(value: str, server: ServerProcess) -> None:
    marker = f"MARK{abs(hash(value))}"
    status, headers, data = server.request(
        "GET", f"/api/configs/not-a-mac-{marker}", None,
        {"X-Request-ID": f"{value}{marker}".encode().decode("latin-1")},
    )  # fmt: skip
    assert status in (400, 401)
    rid = headers["x-request-id"]
    assert re.fullmatch(r"[A-Za-z0-9._:+/=@-]{1,128}", rid)
    assert json.loads(data)["correlationId"] == rid
    assert f"{value}{marker}" not in server.log()
    good = "trace-0af7651916cd43dd8448eb211c80319c"
    assert (
        server.request("GET", "/api/health/live", None, {"X-Request-ID": good})[1]["x-request-id"]
        == good
    )


def test_nosniff_on_every_kind_of_answer(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKENS[0]}"}
    server.request("PUT", f"/api/configs/{MAC}", put_body({"a": 3}), {**JSON_HEADERS, **auth})
    etag = server.request("GET", f"/esp32/config/{MAC}.json")[1]["etag"]
    cases = [
        ("GET", f"/esp32/config/{MAC}.json", {}),
        ("HEAD", f"/esp32/config/{MAC}.json", {}),
        ("GET", f"/esp32/config/{MAC}.json", {"If-None-Match": etag}),  # 304
        ("GET", "/esp32/config/02-00-00-00-04-99.json", {}),  # 404
        ("GET", "/esp32/config/bad.json", {}),  # 400
        ("GET", "/api/configs", auth),
        ("GET", "/api/configs", {}),  # 401
        ("PATCH", "/api/configs", auth),  # 405
        ("GET", "/nowhere", {}),  # unknown route
        ("OPTIONS", "/api/configs", {}),
        ("GET", "/api/health", {}),
        ("GET", "/metrics", {}),
        ("GET", "/api/openapi.json", {}),
        ("GET", "/api/docs", {}),
        ("GET", "/api/docs/assets/init.js", {}),
    ]
    for method, path, headers in cases:
        status, response_headers, _ = server.request(method, path, None, headers)
        assert response_headers.get("x-content-type-options") == "nosniff", (method, path, status)


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str | None] = []
        self.inline: list[str] = []
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.handlers += [name for name in names if name.startswith("on")]
        for attr in ("src", "href"):
            if tag in ("script", "link") and names.get(attr):
                self.sources.append(names[attr])
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


def test_docs_page_has_no_inline_or_foreign_script(server: ServerProcess) -> None:
    status, headers, body = server.request("GET", "/api/docs")
    assert status == 200, body[:300]
    parser = _Scripts()
    parser.feed(body.decode())
    assert parser.inline == [], "inline script would need 'unsafe-inline'"
    assert parser.handlers == []
    for source in parser.sources:
        assert source is not None
        assert not re.match(r"(?i)^([a-z]+:)?//", source), f"foreign origin: {source}"
        assert server.request("GET", "/api/" + source)[0] == 200, source  # all served locally
    csp = headers["content-security-policy"]
    directives = {}
    for directive in filter(None, (d.strip() for d in csp.split(";"))):
        name, _, value = directive.partition(" ")
        directives[name] = value
    assert directives["script-src"].split() == ["'self'"]
    assert "'unsafe-inline'" not in directives.get("default-src", "")
    assert directives.get("frame-ancestors") == "'none'"


def test_default_bind_is_loopback() -> None:
    assert Settings().host == "127.0.0.1"
    assert Settings.from_env({}).host == "127.0.0.1"
    assert Settings.from_env({}).admin_tokens == ()  # open unless tokens are configured
