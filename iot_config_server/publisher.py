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

**Priority.** The publisher runs at the lowest CPU priority (`NICENESS`, nice 19): where it
shares a core with the workers (a replica limited to one core), requests go first and
announcements wait, coalesced per device, for the time the workers leave (each PUT's fsync
leaves plenty). Nice 19 rather than ``SCHED_IDLE``: a server saturated for minutes still
announces, a little late, instead of not at all.

**Memory.** The supervisor forks the publisher when it starts, before Granian runs any thread
(forking is only safe from a process that runs one), so the publisher shares the pages of the
modules the supervisor has imported (the core, prometheus_client, the settings) and adds
mainly paho-mqtt and its own data. A restart after a crash cannot fork (the supervisor runs
threads by then): it starts a new interpreter, which costs more memory. ``ps`` and ``top`` show
the publisher as ``iot-config-mqtt``.

**Life.** The supervisor restarts a publisher that exits unexpectedly (after a back-off, with an
error line each time), stops it with SIGTERM after the workers have stopped, and the publisher
exits by itself if the supervisor dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
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
#: The publisher's process name (``ps -o comm``, ``top``): a fork shows the server's command line.
PUBLISHER_NAME = "iot-config-mqtt"
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
    """A restarted publisher's entry point: ``python -m iot_config_server.publisher FIFO``."""
    settings = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 -- from our supervisor's pipe
    _run_publisher(settings, sys.argv[1])


def _run_publisher(settings: Settings, fifo: str) -> None:
    """The publisher process: the notifier, fed by the FIFO, until SIGTERM or its parent dies."""
    from .logging_setup import configure_logging  # noqa: PLC0415 -- in the publisher only
    from .metrics import use_file_backed_values  # noqa: PLC0415
    from .notifications import notifier_from_settings  # noqa: PLC0415

    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(PUBLISHER_NAME)
    configure_logging(settings)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    use_file_backed_values()  # before the notifier makes its metrics
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
    directory is set up); while the supervisor runs one thread, the publisher is a fork of it.
    Yields the FIFO's path, to which workers hand own writes with
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
        self._settings = settings
        self._fifo = fifo
        self._metrics = metrics
        self._stopping = threading.Event()
        self._pid: int | None = None  # the publisher's, until reaped
        self._spawned: subprocess.Popen[bytes] | None = None  # when not forked
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="mqtt-publisher", daemon=True)

    def start(self) -> None:
        with self._lock:
            self._pid = self._fork() if threading.active_count() == 1 else self._spawn()
        log.info("MQTT publisher process started (pid %s)", self._pid)
        self._thread.start()

    def _fork(self) -> int:
        """The publisher as a fork of this process: it shares the modules imported so far."""
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:
            gc.freeze()  # its collector never writes to the objects it shares with us
            signal.set_wakeup_fd(-1)  # a descriptor of ours, closed next
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # e.g. the listening socket
            os.environ[MULTIPROCESS_ENV] = self._metrics
            _run_publisher(self._settings, self._fifo)
            status = 0
        except BaseException:
            log.exception("the MQTT publisher failed")
        finally:
            os._exit(status)  # never back into the supervisor's code, nor its exit handlers

    def _spawn(self) -> int:
        """The publisher in a new interpreter, the settings pickled on its stdin.

        Not a fork: the supervisor's threads (Granian's, ours) must not be copied; nor
        multiprocessing's spawn, which re-imports the CLI and adds a resource tracker process.
        """
        process = subprocess.Popen(  # noqa: S603 -- our own interpreter and module
            [sys.executable, "-m", __name__, self._fifo],
            stdin=subprocess.PIPE,
            env={**os.environ, MULTIPROCESS_ENV: self._metrics},
        )
        self._spawned = process
        assert process.stdin is not None
        with contextlib.suppress(OSError), process.stdin:  # a publisher that died at once
            process.stdin.write(pickle.dumps(self._settings))
        return process.pid

    def _reap(self, pid: int) -> int:
        """Wait for the publisher ``pid`` to exit; its exit status (lock not held).

        It is reaped under the lock, and forgotten, so `stop` never signals a pid that was
        reaped, and may have been reused.
        """
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            spawned, self._spawned, self._pid = self._spawned, None, None
            if spawned is not None:
                return spawned.wait()
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def _watch(self) -> None:
        delay = RESTART_DELAY[0]
        while True:
            with self._lock:
                pid = self._pid
            if pid is None:
                return
            started = time.monotonic()
            status = self._reap(pid)
            if self._stopping.is_set():
                return
            _forget_metrics_of(pid, self._metrics)
            if time.monotonic() - started > STABLE_SECONDS:
                delay = RESTART_DELAY[0]
            log.error(
                "the MQTT publisher process (pid %s) exited with status %s; restarting it in "
                "%g s (own writes wait in the hand-off meanwhile)",
                pid,
                status,
                delay,
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_DELAY[1])
            with self._lock:
                if self._stopping.is_set():
                    return
                self._pid = self._spawn()
            log.info("MQTT publisher process started (pid %s)", self._pid)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            if self._pid is not None:
                os.kill(self._pid, signal.SIGTERM)  # it disconnects cleanly; `_watch` reaps it
        self._thread.join(STOP_SECONDS)
        if self._thread.is_alive():
            log.warning("the MQTT publisher did not stop within %g s: killed", STOP_SECONDS)
            with self._lock:
                if self._pid is not None:
                    os.kill(self._pid, signal.SIGKILL)
            self._thread.join()


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
