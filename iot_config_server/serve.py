"""Run the app in production: Granian's WSGI server, until SIGTERM or SIGINT.

Granian was chosen by measurement (``python tests/benchmarks/bench_server.py --compare-servers``;
the figures are in the README): on one core it served a bare Bottle route 1.5 to 2.5 times faster
than waitress and about 2.5 times faster than gunicorn (gthread) or cheroot; its HTTP layer is
asynchronous Rust, so clients that trickle their headers hold no Python thread (they starved
gunicorn and cheroot); and on SIGTERM it stops accepting, lets in-flight requests finish and exits
0 (waitress-serve dropped the request in flight, cheroot hung).

Granian runs the app in worker processes (one by default) under a small supervisor process that
owns the listening socket. Each worker builds its own app from the `Settings` it is handed (no
global state crosses the fork), and several workers on one store are safe because the core's
compare-and-swap holds across processes. This module imports neither Bottle nor the app, so the
supervisor stays small; workers import them when they build the app.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from iot_config_core import ConfigError, DocumentLimits, open_store

from .device_auth import settings_problem
from .logging_setup import configure_logging
from .settings import Settings

__all__ = ["EXIT_OK", "EXIT_UNAVAILABLE", "GRACEFUL_STOP_SECONDS", "run_wsgi", "serve"]

log = logging.getLogger(__name__)

#: Exit statuses, the same numbers the rest of the ``iot-config`` command uses.
EXIT_OK = 0
EXIT_UNAVAILABLE = 3
#: How long in-flight requests get to finish after SIGTERM before a worker is killed: below
#: Kubernetes' default 30 s grace period, above the core's 10 s lock timeout.
GRACEFUL_STOP_SECONDS = 25
#: A client gets this long to send its request headers (a slow or stalled client is dropped).
HEADER_READ_TIMEOUT_MS = 30_000

WsgiApp = Callable[..., Any]


def _default_store_url() -> str:
    return Settings().store_url


def _is_local_path(url: str) -> bool:
    return "://" not in url or url.startswith(("file://", "local://"))


def _local_root(url: str) -> str:
    for scheme in ("file://", "local://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def _prepare_store(settings: Settings) -> str | None:
    """Create the default store directory if missing; refuse a missing one that was configured.

    Returns the store's description for the start-up log line, or ``None`` (after logging why)
    when the server must not start.
    """
    from .wsgi import is_default_store  # noqa: PLC0415 -- wsgi imports Bottle; only names here

    url = settings.store_url
    limits = DocumentLimits(max_bytes=settings.max_document_bytes)
    try:
        store = open_store(url, create=is_default_store(settings), limits=limits)
    except ConfigError as exc:
        log.error("cannot open store %s: %s", url, exc.message)  # noqa: TRY400 -- no traceback
        return None
    if _is_local_path(url) and not os.path.isdir(_local_root(url)):
        log.error(
            "store directory %s does not exist; create it (only the default %s is created "
            "automatically)",
            store.description,
            _default_store_url(),
        )
        return None
    if url.startswith("memory://") and settings.workers > 1:
        log.warning(
            "memory:// stores are private to one process: each of the %d workers has its own",
            settings.workers,
        )
    return store.description


def _load_app(settings: Settings) -> WsgiApp:
    """Build the app inside a worker process (module-level, so it pickles by reference)."""
    from .wsgi import create_app_from_settings  # noqa: PLC0415 -- Bottle only in workers

    app: WsgiApp = create_app_from_settings(settings)
    return app


def run_wsgi(
    load_app: Callable[[], WsgiApp],
    *,
    host: str,
    port: int,
    threads: int,
    workers: int,
    log_level: str = "INFO",
    description: str = "iot_config_server.wsgi:create_app_from_env",
) -> int:
    """Serve the WSGI app ``load_app()`` builds (called once in each worker) until SIGTERM/SIGINT.

    ``load_app`` must pickle (a module-level function or a `functools.partial` of one). Shared
    with the server benchmark, so its baseline app runs on exactly this server configuration.
    Returns 0 after a graceful stop, non-zero when a worker died or the port could not be bound.
    """
    from granian import Granian  # noqa: PLC0415 -- the server extra, only when serving
    from granian.constants import Interfaces, RuntimeModes  # noqa: PLC0415
    from granian.http import HTTP1Settings  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415

    server = Granian(
        description,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        # One Rust runtime thread per worker: measured fastest on one core, and request handling
        # in Python is serialised by the GIL anyway. `threads` Python threads run the app, so one
        # slow store call does not hold up every other request.
        runtime_mode=RuntimeModes.st,
        blocking_threads=threads,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
        websockets=False,
        log_level=LogLevels(log_level.lower()),
        # Granian's own lines go through the root logger, i.e. our stdout handler and format.
        log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
        log_access=False,
        workers_kill_timeout=GRACEFUL_STOP_SECONDS,
        respawn_failed_workers=True,
    )
    try:
        server.serve(target_loader=load_app, wrap_loader=False)
    except SystemExit as exc:  # granian exits 1 when a worker died and could not be respawned
        return exc.code if isinstance(exc.code, int) else 1
    except (OSError, RuntimeError) as exc:  # granian reports a taken address as RuntimeError
        log.error("cannot listen on %s:%d: %s", host, port, exc)  # noqa: TRY400 -- no traceback
        return EXIT_UNAVAILABLE
    return EXIT_OK


def serve(settings: Settings) -> int:
    """Serve the REST and device API with ``settings`` until SIGTERM or SIGINT.

    In-flight requests finish before the process exits with status 0. Logs go to stdout.
    Returns 3 without serving when the store cannot be used or the port cannot be bound.
    """
    configure_logging(settings)
    problem = settings_problem(settings)
    if problem is not None:
        log.error("device auth %s: %s", settings.device_auth, problem)
        return EXIT_UNAVAILABLE
    description = _prepare_store(settings)
    if description is None:
        return EXIT_UNAVAILABLE
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info(
        "serving http://%s:%d/ from store %s; admin auth %s; %d worker(s) x %d thread(s)",
        host,
        settings.port,
        description,
        "enabled" if settings.auth_enabled else "DISABLED",
        settings.workers,
        settings.threads,
    )
    if not settings.auth_enabled:
        log.warning(
            "no admin tokens are set (IOT_CONFIG_ADMIN_TOKENS): anyone who can reach this port "
            "can change or delete configs"
        )
    status = run_wsgi(
        functools.partial(_load_app, settings),
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        workers=settings.workers,
        log_level=settings.log_level,
    )
    # Granian's dictConfig closed every existing handler, ours included: reinstall it.
    configure_logging(settings)
    log.info("stopped (exit status %d)", status)
    return status
