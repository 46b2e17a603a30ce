"""The device fast path answers exactly as Bottle's dispatch of the same route does.

`create_app` answers successful device reads in front of Bottle's dispatch (for throughput); the
same app dispatched by Bottle is ``bottle.Bottle.wsgi(app, ...)``. Each request goes to two apps
over one store, one each way, and status, headers (names, values, order), body and metrics must
be identical. Whether Bottle handled a request shows in the environ it leaves ``bottle.app`` in.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import bottle
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from iot_config_core import compute_etag, open_store
from iot_config_server import Settings, create_app
from iot_config_server.app import METRICS_CONFIG_KEY
from iot_config_server.logging_setup import RequestIdFilter

MAC = "aa-bb-cc-dd-ee-ff"
CORRUPT = "11-22-33-44-55-66"
MISSING = "00-00-00-00-00-01"
DATA = b'{"deviceName": "hall",  "n": 1.50}\n'
ETAG = compute_etag(DATA)
UI = "https://ui.example.org"
GENERATED = re.compile(r"[0-9a-f]{24}")


@attrs.frozen
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes
    via_bottle: bool


def environ(
    method: str, path: str, headers: dict[str, str] | None = None, script_name: str = ""
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def call(app: Callable[..., Iterable[bytes]], env: dict[str, Any]) -> Answer:
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda _data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    ((status, headers),) = started
    return Answer(status, list(headers), body, "bottle.app" in env)


def fast(app: bottle.Bottle) -> Callable[..., Iterable[bytes]]:
    """The app as a server calls it."""
    return app  # type: ignore[no-any-return]


def dispatched(app: bottle.Bottle) -> Callable[..., Iterable[bytes]]:
    """The same app, always through Bottle's own dispatch."""
    return lambda env, start_response: bottle.Bottle.wsgi(app, env, start_response)


def without_generated_id(answer: Answer, request_headers: dict[str, str]) -> Answer:
    """Replace a freshly generated request id by a placeholder (two calls cannot share it)."""
    if "X-Request-ID" in request_headers and GENERATED.fullmatch(request_headers["X-Request-ID"]):
        return answer
    ids = [value for name, value in answer.headers if name == "X-Request-Id"]
    assert len(ids) == 1
    if not GENERATED.fullmatch(ids[0]):
        return answer
    headers = [(n, "<generated>" if n == "X-Request-Id" else v) for n, v in answer.headers]
    body = answer.body.replace(ids[0].encode(), b"<generated>")
    return attrs.evolve(answer, headers=headers, body=body)


def counters(app: bottle.Bottle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every count the app's metrics hold (durations differ between two apps; counts must not)."""
    text = app.config[METRICS_CONFIG_KEY].exposition().decode()
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_sum", "_created")):
                continue
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "configs"
    open_store(str(root), create=True)
    (root / f"{MAC}.json").write_bytes(DATA)
    (root / f"{CORRUPT}.json").write_bytes(b'{"broken": ')
    return root


def pair(root: Path, **settings: Any) -> tuple[bottle.Bottle, bottle.Bottle]:
    store = open_store(str(root))
    return create_app(store, Settings(**settings)), create_app(store, Settings(**settings))


def expect_same(
    fast_app: bottle.Bottle, bottle_app: bottle.Bottle, env_args: dict[str, Any]
) -> tuple[Answer, Answer]:
    headers = env_args.get("headers") or {}
    quick = call(fast(fast_app), environ(**env_args))
    slow = call(dispatched(bottle_app), environ(**env_args))
    assert slow.via_bottle
    assert without_generated_id(quick, headers) == attrs.evolve(
        without_generated_id(slow, headers), via_bottle=quick.via_bottle
    )
    return quick, slow


# -- what the fast path answers, and what it leaves to Bottle ------------------------------------

MAC_SEGMENTS = [
    MAC,
    "AA:BB:CC:DD:EE:FF",
    "aabb.ccdd.eeff",
    " aa-bb-cc-dd-ee-ff",
    MISSING,
    CORRUPT,
    "zz",
    "a.json",
    "aa%3Abb",
    "\xc3\xa9",  # UTF-8 bytes of a non-ASCII character, as a WSGI server passes them
    "",
]
IF_NONE_MATCH = [
    None,
    f'"{ETAG}"',
    f'W/"{ETAG}"',
    ETAG,
    "*",
    f'"other", "{ETAG}"',
    '"other"',
    '"unterminated',
    "",
]
REQUEST_IDS = [None, "abc-123", "has space", "x" * 200, "0123456789abcdef01234567"]
ORIGINS = [None, UI, "https://elsewhere.example"]

requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "HEAD", "GET", "POST", "PUT", "OPTIONS", "get"]),
        "path": st.sampled_from(["/esp32/config/{}.json", "/api/configs/{}.json"]),
        "mac": st.sampled_from(MAC_SEGMENTS),
        "if_none_match": st.sampled_from(IF_NONE_MATCH),
        "request_id": st.sampled_from(REQUEST_IDS),
        "origin": st.sampled_from(ORIGINS),
    }
)


def env_args_of(request: dict[str, Any]) -> dict[str, Any]:
    headers = {}
    for key, name in (
        ("if_none_match", "If-None-Match"),
        ("request_id", "X-Request-ID"),
        ("origin", "Origin"),
    ):
        if request[key] is not None:
            headers[name] = request[key]
    return {
        "method": request["method"],
        "path": request["path"].format(request["mac"]),
        "headers": headers,
    }


@pytest.mark.parametrize("cors", [(), (UI,), ("*",)], ids=["no-cors", "cors", "cors-any"])
def test_fast_path_and_bottle_dispatch_answer_alike(root: Path, cors: tuple[str, ...]) -> None:
    fast_app, bottle_app = pair(root, cors_origins=cors)
    statuses: set[str] = set()
    fast_answers: set[bool] = set()

    @hypothesis_settings(max_examples=300)
    @given(requests)
    def check(request: dict[str, Any]) -> None:
        quick, _ = expect_same(fast_app, bottle_app, env_args_of(request))
        statuses.add(quick.status[:3])
        answered_fast = not quick.via_bottle
        fast_answers.add(answered_fast)
        should = (
            request["method"] in ("GET", "HEAD")
            and quick.status[:3] in ("200", "304")
            and request["mac"].isascii()
            and not (cors and request["origin"] is not None)
        )
        assert answered_fast == should

    check()
    assert {"200", "304", "400", "404", "405", "422"} <= statuses
    assert fast_answers == {True, False}
    assert counters(fast_app) == counters(bottle_app)


@pytest.mark.parametrize("path", ["/esp32/config/{}.json", "/api/configs/{}.json"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "if_none_match", [None, f'"{ETAG}"', '"other"'], ids=["plain", "match", "stale"]
)
def test_successful_reads_are_answered_fast_and_exactly(
    root: Path, path: str, method: str, if_none_match: str | None
) -> None:
    fast_app, bottle_app = pair(root)
    headers = {"X-Request-ID": "dev-1"}
    if if_none_match is not None:
        headers["If-None-Match"] = if_none_match
    quick, _ = expect_same(
        fast_app, bottle_app, {"method": method, "path": path.format(MAC), "headers": headers}
    )
    assert not quick.via_bottle
    status = "304 Not Modified" if if_none_match == f'"{ETAG}"' else "200 OK"
    assert quick.status == status
    expected = [
        ("Etag", f'"{ETAG}"'),
        ("Cache-Control", "no-cache"),
        ("Content-Type", "application/json"),
        ("X-Request-Id", "dev-1"),
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Length", str(len(DATA))),
    ]
    if status.startswith("304"):
        expected = [h for h in expected if h[0] not in ("Content-Type", "Content-Length")]
    assert quick.headers == expected
    assert quick.body == (DATA if method == "GET" and status == "200 OK" else b"")


def test_cors_headers_without_an_origin_come_from_the_fast_path(root: Path) -> None:
    fast_app, bottle_app = pair(root, cors_origins=(UI,))
    quick, _ = expect_same(
        fast_app, bottle_app, {"method": "GET", "path": f"/esp32/config/{MAC}.json"}
    )
    assert not quick.via_bottle
    assert ("Vary", "Origin") in quick.headers
    with_origin, _ = expect_same(
        fast_app,
        bottle_app,
        {"method": "GET", "path": f"/esp32/config/{MAC}.json", "headers": {"Origin": UI}},
    )
    assert with_origin.via_bottle
    assert ("Access-Control-Allow-Origin", UI) in with_origin.headers


# -- failed reads: handed to Bottle once, not redone ----------------------------------------------


def test_unavailable_store_is_read_once_logged_and_timed(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fast_app, bottle_app = pair(root)
    shutil.rmtree(root)
    caplog.handler.addFilter(RequestIdFilter())
    env_args = {
        "method": "GET",
        "path": f"/esp32/config/{MAC}.json",
        "headers": {"X-Request-ID": "outage-1"},
    }
    with caplog.at_level(logging.ERROR):
        quick, _ = expect_same(fast_app, bottle_app, env_args)
    assert quick.via_bottle
    assert quick.status.startswith("503")
    assert ("Retry-After", "1") in quick.headers
    logged = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(logged) == 2  # one per app
    assert {r.request_id for r in logged} == {"outage-1"}  # type: ignore[attr-defined]
    found = counters(fast_app)
    assert found == counters(bottle_app)
    outcome = (("operation", "get_raw"), ("outcome", "store_unavailable"))
    assert found[("iot_config_config_operations_total", outcome)] == 1
    route = (("route", "/esp32/config/<mac>.json"),)
    assert found[("iot_config_http_request_duration_seconds_count", route)] == 1


# -- changes to the app, prefixes ----------------------------------------------------------------


def test_routes_hooks_or_plugins_added_later_switch_the_fast_path_off(root: Path) -> None:
    changes: list[Callable[[bottle.Bottle], Any]] = [
        lambda app: app.route("/extra", callback=lambda: b"extra"),
        lambda app: app.add_hook("after_request", lambda: None),
        lambda app: app.install(lambda callback: callback),
    ]
    for change in changes:
        fast_app, bottle_app = pair(root)
        env_args: dict[str, Any] = {"method": "GET", "path": f"/esp32/config/{MAC}.json"}
        assert not call(fast(fast_app), environ(**env_args)).via_bottle
        change(fast_app)
        change(bottle_app)
        quick, _ = expect_same(fast_app, bottle_app, env_args)
        assert quick.via_bottle
        assert quick.status == "200 OK"


def test_behind_a_script_name_prefix(root: Path) -> None:
    fast_app, bottle_app = pair(root)
    for headers in ({}, {"If-None-Match": f'"{ETAG}"'}, {"X-Request-ID": "p-1"}):
        for mac in (MAC, MISSING, "zz"):
            env_args: dict[str, Any] = {
                "method": "GET",
                "path": f"/esp32/config/{mac}.json",
                "headers": headers,
                "script_name": "/proxy",
            }
            quick, _ = expect_same(fast_app, bottle_app, env_args)
            assert quick.via_bottle == (mac != MAC)


def test_mounted_in_a_parent_app_answers_as_the_app_itself(root: Path) -> None:
    fast_app, _ = pair(root)
    mounted_app, _ = pair(root)
    parent = bottle.Bottle()
    parent.mount("/iot/", mounted_app)
    for method in ("GET", "HEAD"):
        for headers in ({}, {"If-None-Match": f'"{ETAG}"'}, {"X-Request-ID": "m-1"}):
            for mac in (MAC, MISSING, "zz", CORRUPT):
                path = f"/esp32/config/{mac}.json"
                direct = call(fast(fast_app), environ(method, path, headers))
                mounted = call(parent, environ(method, "/iot/" + path.lstrip("/"), headers))
                assert mounted.via_bottle
                assert without_generated_id(direct, headers) == attrs.evolve(
                    without_generated_id(mounted, headers), via_bottle=direct.via_bottle
                )
