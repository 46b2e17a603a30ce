"""A real server (the app behind a WSGI server on loopback) and the old service's document."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from iot_config_core import open_store
from iot_config_server import Settings, create_app

#: The structure of the old service's OpenAPI document (paths, operationIds, parameters, schema
#: names and fields; its prose removed): what clients generated from it were built against.
OLD_DOCUMENT = Path(__file__).with_name("old-service-openapi.json")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the stdlib's name
        """Requests are not test output."""


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real HTTP server on 127.0.0.1 serving a fresh app."""
    root = tmp_path_factory.mktemp("compat") / "configs"
    app = create_app(open_store(str(root), create=True), Settings())
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET (error statuses are answers too)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def live_document(base_url: str) -> dict[str, Any]:
    """Our document where the old service's generator scripts fetch it."""
    status, _, body = fetch(base_url + "/api/docs/openapi.json")
    assert status == 200
    document: dict[str, Any] = json.loads(body)
    return document


@pytest.fixture(scope="module")
def old_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OLD_DOCUMENT.read_text(encoding="utf-8"))
    return document
