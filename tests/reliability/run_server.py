"""Serve the real app over a latency-adding store: ``run_server.py STORE_DIR PORT DELAY``.

The production entry point opens its store from a URL, and a slow backend has no URL, so this
script builds the same app (`create_app`) over ``SlowBackend(PosixBackend(STORE_DIR), DELAY)`` and
serves it with the same WSGI server the production runner uses, when it exposes one for an app.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import attrs

from iot_config_core import ConfigStore
from iot_config_core.posix_backend import PosixBackend
from iot_config_server.app import create_app
from iot_config_server.logging_setup import configure_logging
from iot_config_server.settings import Settings


def main() -> None:
    """Build the app over a slow store and serve it until killed."""
    root, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    settings = attrs.evolve(
        Settings.from_env(os.environ), store_url=root, host="127.0.0.1", port=port
    )
    configure_logging(settings)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    slow: Any = importlib.import_module("slow_backend")  # a sibling file, run as a script
    store = ConfigStore.from_backend(slow.SlowBackend(PosixBackend(root), delay))
    app = create_app(store, settings)
    waitress: Any = importlib.import_module("waitress")
    waitress.serve(app, host="127.0.0.1", port=port, threads=settings.threads, _quiet=True)


if __name__ == "__main__":
    main()
