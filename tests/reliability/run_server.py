"""Serve the real app over a latency-adding store: ``run_server.py STORE_DIR DELAY --port PORT``.

The production entry point opens its store from a URL, and a slow backend has no URL, so this
script builds the same app (`create_app`) over ``SlowBackend(PosixBackend(STORE_DIR), DELAY)`` and
serves it with the production server configuration (`iot_config_server.serve.run_wsgi`: Granian,
same threads and timeouts). Settings other than the store come from ``IOT_CONFIG_*`` variables.
"""

from __future__ import annotations

import argparse
import functools
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
from iot_config_server.serve import run_wsgi
from iot_config_server.settings import Settings


def build_app(settings: Settings, root: str, delay: float) -> Any:
    """Run in each server worker: the app over a slow store (module-level, so it pickles)."""
    configure_logging(settings)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    slow: Any = importlib.import_module("slow_backend")  # a sibling file, run as a script
    backend = slow.SlowBackend(PosixBackend(root), delay)
    store = ConfigStore(backend, limits=settings.document_limits)
    return create_app(store, settings)


def main() -> int:
    """Serve the app over a slow store until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("delay", type=float)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    root, delay = args.root, args.delay
    settings = attrs.evolve(
        Settings.from_env(os.environ), store_url=root, host=args.host, port=args.port
    )
    configure_logging(settings)
    return run_wsgi(
        functools.partial(build_app, settings, root, delay),
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        workers=settings.workers,
        log_level=settings.log_level,
        description="tests/reliability/run_server.py:build_app",
    )


if __name__ == "__main__":
    sys.exit(main())
