"""Run the app in production: Granian's WSGI server, until SIGTERM or SIGINT.

Granian was chosen by measurement (``python tests/benchmarks/bench_server.py --compare-servers``;
the figures are in the README): on one core it served a bare Bottle route faster than waitress,
gunicorn (gthread) and cheroot; its HTTP layer is asynchronous Rust, so clients that trickle
their headers hold no Python thread (they starved gunicorn and cheroot); and on SIGTERM it stops
accepting, lets in-flight requests finish and exits 0 (waitress-serve dropped the request in
flight, cheroot hung).

Granian runs the app in worker processes (one by default) under a small supervisor process that
owns the listening socket, which we bind ourselves (see `listen`) so that a port is never shared.
Each worker builds its own app from the `Settings` it is handed (no global state crosses the
fork), and several workers on one store are safe because the core's compare-and-swap holds
across processes. This module imports neither Bottle nor the app, so the supervisor stays small;
workers import them when they build the app.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from iot_config_core import ConfigError, StoreMissingError, StoreUnavailableError, store_scheme

from .device_auth import settings_problem
from .http_errors import ExitStatus
from .logging_setup import configure_logging
from .settings import Settings

__all__ = [
    "GRACEFUL_STOP_SECONDS",
    "ListenError",
    "listen",
    "run_wsgi",
    "serve",
]

log = logging.getLogger(__name__)

#: How long in-flight requests get to finish after SIGTERM before a worker is killed: below
#: Kubernetes' default 30 s grace period, above the core's 10 s lock timeout.
GRACEFUL_STOP_SECONDS = 25
#: A client gets this long to send its request headers (a slow or stalled client is dropped).
HEADER_READ_TIMEOUT_MS = 30_000
#: Connections the kernel queues for the workers to accept (Granian's own default).
BACKLOG = 1024

WsgiApp = Callable[..., Any]


class ListenError(Exception):
    """The server cannot listen where it was asked to; ``status`` is the exit status to use."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def resolve_host(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The address family and numeric address to bind for ``host`` (an address or a hostname).

    A hostname binds its first address (``localhost`` is usually ``127.0.0.1``). Raises
    `ListenError` with exit status 2 when ``host`` is neither an address nor resolvable.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        message = f"host {host!r} is not an address to listen on: {reason}"
        raise ListenError(ExitStatus.USAGE, message) from None
    family, _, _, _, address = infos[0]
    return family, str(address[0])


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, bound *without* ``SO_REUSEPORT``.

    Granian's own listeners set ``SO_REUSEPORT`` (so that its workers can each bind the port),
    and the kernel lets any other process of the same user with that option bind the port too
    and splits connections between them: a second server, on another store, would silently
    answer half the fleet. A socket bound without the option cannot share the port with any
    listener, so the kernel refuses the second server atomically, with no window between a
    check and the bind. Raises `ListenError` (exit status 3 for a taken port, 2 for an address
    this machine does not have).
    """
    family, address = resolve_host(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by connections
        sock.bind((address, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                ExitStatus.UNAVAILABLE,
                f"cannot listen on {where}: port {port} is already in use by another process "
                "(another iot-config?)",
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ListenError(
                ExitStatus.USAGE, f"cannot listen on {where}: not an address of this machine"
            ) from None
        raise ListenError(
            ExitStatus.UNAVAILABLE, f"cannot listen on {where}: {exc.strerror}"
        ) from None
    return sock


def _prepare_store(settings: Settings) -> str | None:
    """Open the store (creating only the default directory); refuse a missing one.

    Returns the store's description for the start-up log line, or ``None`` (after logging why)
    when the server must not start.
    """
    try:
        store = settings.open_store()
        store.check()
    except StoreMissingError as exc:  # only the default store is created automatically
        log.error("%s", exc.message)  # noqa: TRY400 -- one line, no traceback
        return None
    except StoreUnavailableError as exc:  # an outage: serve, and let readiness report it
        log.warning("store %s is not answering yet: %s", settings.store_url, exc.message)
        return settings.store_url
    except ConfigError as exc:
        log.error("cannot open store %s: %s", settings.store_url, exc.message)  # noqa: TRY400
        return None
    return store.description


def _load_app(
    settings: Settings, hand_off: str | None = None, publisher_metrics: str | None = None
) -> WsgiApp:
    """Build the app inside a worker process (module-level, so it pickles by reference)."""
    from .wsgi import create_app_from_settings  # noqa: PLC0415 -- Bottle only in workers

    return create_app_from_settings(
        settings, hand_off=hand_off, publisher_metrics=publisher_metrics
    )


def run_wsgi(
    load_app: Callable[[], WsgiApp],
    *,
    host: str,
    port: int,
    threads: int,
    workers: int,
    log_level: str = "INFO",
    description: str = "iot_config_server.wsgi:create_app_from_env",
    listener: socket.socket | None = None,
) -> int:
    """Serve the WSGI app ``load_app()`` builds (called once in each worker) until SIGTERM/SIGINT.

    ``load_app`` must pickle (a module-level function or a `functools.partial` of one). Shared
    with the server benchmark, so its baseline app runs on exactly this server configuration.
    ``listener`` is a socket from `listen` (made here from ``host`` and ``port`` if not given).
    Returns 0 after a graceful stop, 2 or 3 when it cannot listen (see `listen`, which logged
    why), non-zero when a worker died.
    """
    from granian._granian import SocketHolder  # noqa: PLC0415 -- the server extra, when serving
    from granian.constants import Interfaces, RuntimeModes  # noqa: PLC0415
    from granian.http import HTTP1Settings  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415
    from granian.server import MPServer  # noqa: PLC0415

    if listener is None:
        try:
            listener = listen(host, port)
        except ListenError as exc:
            log.error("%s", exc.message)  # noqa: TRY400 -- one line, no traceback
            return exc.status
    sock = listener

    class _Server(MPServer):
        """Granian's worker processes serving our listener: all accept on the one socket we bound.

        Granian's own path for a socket built in its main process (its non-Linux and Unix
        socket path), given our socket instead of one it binds with ``SO_REUSEPORT``. The method
        is private to Granian, hence the ``<2.9`` cap on granian in pyproject.toml.
        """

        def _init_shared_socket(self) -> None:
            sock.set_inheritable(True)
            self._ssp = None
            # Granian's attributes are declared as None until it fills them itself.
            self._sfd = sock.fileno()  # type: ignore[assignment]
            # Linux and FreeBSD holders also take the backlog (they listen in each worker).
            extra = (BACKLOG,) if sys.platform.startswith(("linux", "freebsd")) else ()
            holder = SocketHolder(sock.fileno(), False, *extra)  # type: ignore[call-arg]  # noqa: FBT003
            self._shd = holder  # type: ignore[assignment]
            self._sso = sock

    server = _Server(
        description,
        address=listener.getsockname()[0],
        port=listener.getsockname()[1],
        interface=Interfaces.WSGI,
        workers=workers,
        # One Rust runtime thread per worker: measured fastest on one core, and request handling
        # in Python is serialised by the GIL anyway. `threads` Python threads run the app, so one
        # slow store call does not hold up every other request.
        runtime_mode=RuntimeModes.st,
        blocking_threads=threads,
        backlog=BACKLOG,
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
    finally:
        listener.close()
    return ExitStatus.OK


def serve(settings: Settings) -> int:
    """Serve the REST and device API with ``settings`` until SIGTERM or SIGINT.

    In-flight requests finish before the process exits with status 0. Logs go to stdout.
    Returns 2 without serving for a host it cannot listen on, 3 when the store cannot be used
    or the port is taken (by any process, even one that shares ports with ``SO_REUSEPORT``).
    """
    configure_logging(settings)
    try:
        resolve_host(settings.host, settings.port)  # a bad host is a usage error, found first
    except ListenError as exc:
        log.error("%s", exc.message)  # noqa: TRY400 -- one line, no traceback
        return exc.status
    problem = settings_problem(settings)
    if problem is not None:
        log.error("device auth %s: %s", settings.device_auth, problem)
        return ExitStatus.UNAVAILABLE
    description = _prepare_store(settings)
    if description is None:
        return ExitStatus.UNAVAILABLE
    try:
        listener = listen(settings.host, settings.port)
    except ListenError as exc:
        log.error("%s", exc.message)  # noqa: TRY400 -- one line, no traceback
        return exc.status
    address, port = listener.getsockname()[:2]
    host = f"[{address}]" if ":" in address else address
    log.info(
        "serving http://%s:%d/ from store %s; admin auth %s; %d worker(s) x %d thread(s); "
        "access log %s",
        host,
        port,
        description,
        "enabled" if settings.auth_enabled else "DISABLED",
        settings.workers,
        settings.threads,
        "on" if settings.access_log else "off",
    )
    if not settings.auth_enabled:
        log.warning(
            "no admin tokens are set (IOT_CONFIG_ADMIN_TOKENS): anyone who can reach this port "
            "can change or delete configs"
        )
    from .metrics import multiprocess_directory  # noqa: PLC0415 -- prometheus_client: serving only
    from .publisher import publisher_process  # noqa: PLC0415

    # A memory:// store lives in its one worker: that worker publishes itself, in a thread.
    mqtt = settings.mqtt_url is not None and store_scheme(settings.store_url) != "memory"
    with contextlib.ExitStack() as stack:
        # Workers count into files summed at scrape time.
        stack.enter_context(multiprocess_directory(settings.workers))
        # MQTT: one publisher process beside the workers, fed their own writes by a FIFO.
        hand_off, publisher_metrics = (
            stack.enter_context(publisher_process(settings)) if mqtt else (None, None)
        )
        status = run_wsgi(
            functools.partial(_load_app, settings, hand_off, publisher_metrics),
            host=address,
            port=port,
            threads=settings.threads,
            workers=settings.workers,
            log_level=settings.log_level,
            listener=listener,
        )
    # Granian's dictConfig closed every existing handler, ours included: reinstall it.
    configure_logging(settings)
    log.info("stopped (exit status %d)", status)
    return status
