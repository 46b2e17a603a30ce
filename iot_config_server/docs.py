"""``/api/docs``: Swagger UI served by the app itself, from the ``swagger-ui-bundle-v2`` package.

Works offline (no CDN) and under a strict Content-Security-Policy: every script and stylesheet is
a file from this origin, including the small initializer below, and all URLs are relative so the
page also works behind a reverse-proxy prefix.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import bottle

from .http_errors import ApiError, ApiErrorCode

__all__ = ["CONTENT_SECURITY_POLICY", "DocsAssets"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)

# The page is /api/docs or /api/docs/ (the old service's address), and every URL in it is
# relative to that, so it works wherever the app is mounted: "{assets}" is "docs/assets/" or
# "assets/", and "openapi.json" (in the initializer) is /api/openapi.json or
# /api/docs/openapi.json, both the same document.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>iot-config API</title>
<link rel="stylesheet" href="{assets}swagger-ui.css">
<link rel="stylesheet" href="{assets}index.css">
<link rel="icon" type="image/png" href="{assets}favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}swagger-ui-bundle.js"></script>
<script src="{assets}swagger-ui-standalone-preset.js"></script>
<script src="{assets}init.js"></script>
</body>
</html>
"""

_PAGES = {
    slash: PAGE.format(assets="assets/" if slash else "docs/assets/").encode()
    for slash in (False, True)
}

# validatorUrl null: Swagger UI would otherwise load a validator badge from the internet for any
# page not served from localhost.
INIT_SCRIPT = b"""window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    validatorUrl: null,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout"
  });
});
"""

#: Files of the bundle the page uses, and their media types; nothing else is served.
BUNDLE_FILES = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "index.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}


def _bundle_dir() -> Path | None:
    try:
        module = importlib.import_module("swagger_ui_bundle")
    except ImportError:
        return None
    path = Path(str(module.swagger_ui_path))
    return path if path.is_dir() else None


class DocsAssets:
    """The docs page and its files, read from the installed bundle once and kept in memory."""

    def __init__(self) -> None:
        self._cache: dict[str, bytes] = {}

    def _unavailable(self) -> ApiError:
        return ApiError(
            ApiErrorCode.DOCS_UNAVAILABLE,
            "the interactive docs need the swagger-ui-bundle-v2 package "
            "(the server extra: pip install '.[server]' in a checkout, as the README says); "
            "the OpenAPI document is at /api/openapi.json",
        )

    def page(self, response: bottle.BaseResponse, *, trailing_slash: bool = False) -> bytes:
        """The HTML page (a 503 ``DOCS_UNAVAILABLE`` when the bundle is not installed)."""
        if _bundle_dir() is None:
            raise self._unavailable()
        response.content_type = "text/html; charset=utf-8"
        response.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.set_header("Cache-Control", "no-cache")
        return _PAGES[trailing_slash]

    def asset(self, name: str, response: bottle.BaseResponse) -> bytes:
        """One whitelisted file of the bundle, or our initializer script."""
        if name == "init.js":
            data, media_type = INIT_SCRIPT, "text/javascript; charset=utf-8"
        elif name in BUNDLE_FILES:
            media_type = BUNDLE_FILES[name]
            data = self._cache.get(name, b"")
            if not data:
                directory = _bundle_dir()
                if directory is None:
                    raise self._unavailable()
                data = self._cache[name] = (directory / name).read_bytes()
        else:
            raise ApiError(
                ApiErrorCode.ROUTE_NOT_FOUND,
                f"there is no documentation file {name[:80]!r}",
                path=name[:80],
            )
        response.content_type = media_type
        response.set_header("Cache-Control", "public, max-age=86400")
        return data
