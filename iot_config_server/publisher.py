"""One MQTT publisher process per server, beside the worker processes that serve requests.

``iot-config serve`` with ``MQTT_URL`` runs the notifier (`iot_config_server.notifications`) in
a process of its own, started and watched by the server's supervisor, instead of in every
worker. Publishing (paho's Python, two QoS 1 publishes and their acknowledgements per change) and
the change feed's listings then never take the GIL, or the core, of a process that answers
requests, and a replica has one publisher however many workers it runs.

**The hand-off.** A worker tells the publisher about its own writes through a FIFO in a private
directory (mode 0700) that the supervisor makes: one 6-byte record, the MAC's value, per PUT or
DELETE, written without blocking. Records up to ``PIPE_BUF`` bytes are written whole, so several
workers never interleave them. The FIFO is opened by path, so it works however the WSGI server
starts its workers (fork or spawn). The supervisor keeps it open for the server's life, so what
workers write while the publisher restarts waits in the pipe. A full pipe (the publisher has
stopped reading) drops the record and counts it: the publisher's next poll of the store finds
that write anyway, a poll interval later.

**Metrics.** The publisher counts in prometheus_client's multiprocess files: in the workers'
directory when they have one (several workers), else in a private one that the one worker's
scrape adds to its own metrics, which stay in memory (values in files measured as costing each
request more). Either way whichever worker answers a scrape reports the publisher's too.

**Priority.** The publisher runs at a lower CPU priority than the workers (`NICENESS`): where
it shares a core with them (a replica limited to one core), requests go first and announcements
wait, coalesced per device, for the time the workers leave.

**Life.** The supervisor restarts a publisher that exits unexpectedly (after a back-off, with an
error line each time), stops it with SIGTERM after the workers have stopped, and the publisher
exits by itself if the supervisor dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from iot_config_core import MacAddress

from .metrics import MULTIPROCESS_ENV
from .settings import Settings

if TYPE_CHECKING:
    from prometheus_client import Counter

__all__ = ["HandOff", "publisher_process", "read_records"]

log = logging.getLogger(__name__)

#: The publisher's CPU priority below the workers' (``nice``): on a core it shares with them it
#: takes what they leave, and its backlog, bounded by the fleet, waits instead of the requests.
NICENESS = 19
#: Bytes per record: a MAC's 48-bit value, big-endian.
RECORD_BYTES = 6
#: The hand-off pipe's size asked for: many thousand writes queue while the publisher restarts.
PIPE_BYTES = 1 << 20
#: How long the publisher gets to disconnect cleanly after SIGTERM before it is killed.
STOP_SECONDS = 10.0
#: Restart back-off after an unexpected exit, seconds: first and longest.
RESTART_DELAY = (1.0, 30.0)
#: A publisher that ran this long before exiting restarts after the first delay again.
STABLE_SECONDS = 60.0


class HandOff:
    """The worker's side: ``hand_off(mac)`` queues an own write for the publisher process.

    Never blocks and never raises: a missing or full FIFO drops the record (counted in
    ``dropped``), which leaves that write to the publisher's next poll.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._dropped: Counter | None = None
        self._fd: int | None = None
        self._warned = False
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:  # ENXIO: nobody holds it open to read (the supervisor is gone)
            self._fd = None
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot hand own writes to the MQTT publisher (%s): they are announced "
                    "after its next poll instead",
                    exc.strerror,
                )

    def count_drops(self, dropped: Counter) -> None:
        """Count the records dropped from now on in ``dropped``."""
        self._dropped = dropped

    def __call__(self, mac: MacAddress) -> None:
        """Queue ``mac`` for the publisher; drop it (and count it) when that cannot be done now."""
        fd = self._fd
        if fd is None:
            self._open()
            fd = self._fd
        if fd is not None:
            try:
                os.write(fd, mac.value.to_bytes(RECORD_BYTES, "big"))
            except BlockingIOError:  # the pipe is full
                pass
            except OSError:  # EPIPE: the supervisor's end is gone
                self._fd = None
                os.close(fd)
            else:
                return
        if self._dropped is not None:
            self._dropped.inc()


def read_records(fd: int, announce: Callable[[list[MacAddress]], object]) -> None:
    """Announce the MACs read from the FIFO ``fd`` (opened for reading, blocking), for ever.

    ``announce`` gets every MAC one read returned, in order: whatever queued up while the
    publisher was busy is handed over at once, not one wake-up per record. Returns when the
    FIFO reports end of file (no writer left, which cannot happen while the publisher holds it
    open for writing as well).
    """
    rest = b""
    while True:
        try:
            chunk = os.read(fd, 4096 * RECORD_BYTES)
        except InterruptedError:
            continue
        if not chunk:
            return
        data = rest + chunk
        whole = len(data) - len(data) % RECORD_BYTES
        announce(
            [
                MacAddress(int.from_bytes(data[start : start + RECORD_BYTES], "big"))
                for start in range(0, whole, RECORD_BYTES)
            ]
        )
        rest = data[whole:]


def main() -> None:
    """The publisher process's entry point: ``python -m iot_config_server.publisher FIFO``."""
    settings = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 -- from our supervisor's pipe
    _run_publisher(settings, sys.argv[1])


def _run_publisher(settings: Settings, fifo: str) -> None:
    """The publisher process: the notifier, fed by the FIFO, until SIGTERM or its parent dies."""
    from .logging_setup import configure_logging  # noqa: PLC0415 -- in the new process
    from .metrics import use_file_backed_values  # noqa: PLC0415
    from .notifications import notifier_from_settings  # noqa: PLC0415

    configure_logging(settings)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    if os.environ.get(MULTIPROCESS_ENV):  # before the notifier makes its metrics
        use_file_backed_values()
    notifier = notifier_from_settings(settings.open_store(), settings)
    if notifier is None:  # the supervisor starts this process only with a broker
        return
    # O_RDWR: a FIFO opened so never reports end of file, even while no worker holds it open.
    # Read from before the start: writes made while this process started are own writes.
    fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    reader = threading.Thread(
        target=read_records, args=(fd, notifier.announce_all), name="own-writes", daemon=True
    )
    reader.start()
    notifier.start()  # its metrics, in the files the workers' scrapes sum
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the supervisor died without stopping us
            log.warning("the server's supervisor is gone: the MQTT publisher stops")
            break
    notifier.stop()


@contextlib.contextmanager
def publisher_process(settings: Settings) -> Iterator[tuple[str, str | None]]:
    """Run the MQTT publisher process for as long as the context lasts.

    For the server's supervisor, entered before the workers start (and after the metrics
    directory is set up). Yields the FIFO's path, to which workers hand own writes with
    `HandOff`, and the directory of the publisher's metric files when it is not the workers'
    (`AppMetrics.include_files`): ``None`` when the workers count in files as well.
    """
    directory = tempfile.mkdtemp(prefix="iot-config-mqtt-")  # mode 0700: ours alone
    fifo = str(Path(directory) / "own-writes")
    os.mkfifo(fifo, 0o600)
    shared = os.environ.get(MULTIPROCESS_ENV)
    metrics = shared or str(Path(directory) / "metrics")
    Path(metrics).mkdir(exist_ok=True)
    # Held open for the server's life: workers can open the FIFO (a FIFO without a reader
    # refuses them), and records written while the publisher restarts wait in the pipe.
    keep = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # above the system's limit: the default size (64 KiB)
        fcntl.fcntl(keep, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    keeper = _Keeper(settings, fifo, metrics)
    keeper.start()
    try:
        yield fifo, None if shared else metrics
    finally:
        keeper.stop()
        os.close(keep)
        shutil.rmtree(directory, ignore_errors=True)


class _Keeper:
    """Starts the publisher process, restarts it when it exits unexpectedly, stops it."""

    def __init__(self, settings: Settings, fifo: str, metrics: str) -> None:
        self._settings = pickle.dumps(settings)
        self._fifo = fifo
        self._metrics = metrics
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="mqtt-publisher", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        # A new interpreter running this module, not a fork (the supervisor's threads must not
        # be copied) nor multiprocessing's spawn (which re-imports the CLI and adds a resource
        # tracker process); the settings arrive pickled on its stdin.
        with self._lock:
            if self._stopping.is_set():
                return
            process = subprocess.Popen(  # noqa: S603 -- our own interpreter and module
                [sys.executable, "-m", __name__, self._fifo],
                stdin=subprocess.PIPE,
                env={**os.environ, MULTIPROCESS_ENV: self._metrics},
            )
            self._process = process
        assert process.stdin is not None
        with contextlib.suppress(OSError), process.stdin:  # a publisher that died at once
            process.stdin.write(self._settings)
        log.info("MQTT publisher process started (pid %s)", process.pid)

    def _watch(self) -> None:
        delay = RESTART_DELAY[0]
        while not self._stopping.is_set():
            process = self._process
            if process is None:
                return
            started = time.monotonic()
            status = process.wait()
            if self._stopping.is_set():
                return
            _forget_metrics_of(process.pid, self._metrics)
            if time.monotonic() - started > STABLE_SECONDS:
                delay = RESTART_DELAY[0]
            log.error(
                "the MQTT publisher process (pid %s) exited with status %s; restarting it in "
                "%g s (own writes wait in the hand-off meanwhile)",
                process.pid,
                status,
                delay,
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_DELAY[1])
            self._spawn()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # SIGTERM: the publisher disconnects cleanly
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("the MQTT publisher did not stop within %g s: killed", STOP_SECONDS)
                process.kill()
                process.wait()
        self._thread.join(STOP_SECONDS)


def _forget_metrics_of(pid: int, directory: str) -> None:
    """Remove a dead publisher's gauges from the scrape (its counters stay: they add up)."""
    from prometheus_client import multiprocess  # noqa: PLC0415

    try:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove the metrics of publisher %s: %s", pid, exc)


if __name__ == "__main__":
    main()
