"""Load shedding that sheds only a stuck store, so liveness and metrics outlive a hung mount.

Every request runs on one of a worker's ``threads``. If the store hangs (a stalled CephFS mount,
an unreachable bucket), requests pile up inside store calls until no thread is left; then even
``/api/health/live`` and ``/metrics`` wait, and Kubernetes restarts a pod whose storage is merely
stuck. The gate prevents that with three rules:

- At most ``threads - 2`` store calls run at once, so two threads never wait inside the store.
  Writes get one slot fewer than that, so a device read always finds a slot that no slow write
  (a PUT waiting for its fsync or for the per-config lock) can take.
- A request that finds no free slot waits for one *as long as the store makes progress*: the
  store is judged by the time since the last store call completed while calls are in flight,
  never by how long one call has been running. A burst the store absorbs (hundreds of PUTs
  queueing on one config's lock, each finishing in milliseconds) completes calls all the time and
  is never shed, however long the queue.
- Once ``stall_after`` seconds pass with calls in flight and none completing, the store is hung:
  waiting requests and new ones get 503 ``STORE_BUSY`` with ``Retry-After`` at once, costing a
  thread microseconds, so the probes queued behind them are answered. The first completed call
  reopens the gate.

``stall_after`` (setting ``store_stall_seconds``) trades how long requests may wait on a hang
before being shed against how long one healthy store call may take (calls that start together
finish together, so a single call longer than ``stall_after`` looks like a hang). Its default,
1 s, is a Kubernetes probe's default timeout, so at most one probe waits out the start of a hang;
a local-disk call takes milliseconds, and the slow-store test's device read (two backend calls
of 0.3 s each) 0.6 s. A store that is slow but progressing is never shed: its requests queue,
probes wait in that queue, and more ``threads`` raise its throughput (docs/reliability.md has
the figures).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .http_errors import ApiError, ApiErrorCode

__all__ = ["DEFAULT_STALL_SECONDS", "RESERVED_THREADS", "StoreGate"]

#: Threads that never wait inside a store call, for liveness and metrics.
RESERVED_THREADS = 2
#: Seconds without a completed store call (while calls are in flight) that mean "hung".
DEFAULT_STALL_SECONDS = 1.0


class StoreGate:
    """Counts store calls in flight; `enter` admits, waits or sheds, `leave` records progress."""

    def __init__(
        self,
        threads: int,
        *,
        stall_after: float = DEFAULT_STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = max(1, threads - RESERVED_THREADS)
        self.write_slots = max(1, self.slots - 1)
        self._stall_after = stall_after
        self._clock = clock
        self._writers: dict[int, bool] = {}  # thread id -> whether its call is a write
        self._writes = 0
        # When the store last showed progress: a call completed, or calls began after idling.
        self._progress = clock()
        self._changed = threading.Condition(threading.Lock())

    def enter(self, *, write: bool = False) -> None:
        """Take a slot for this thread's store call; raise 503 ``STORE_BUSY`` if the store hangs."""
        with self._changed:
            while len(self._writers) >= self.slots or (write and self._writes >= self.write_slots):
                stalled = self._clock() - self._progress
                if stalled >= self._stall_after:
                    raise ApiError(
                        ApiErrorCode.STORE_BUSY,
                        f"The store has completed no request for {stalled:.1f} s and "
                        f"{len(self._writers)} are waiting on it; try again shortly",
                        in_flight=len(self._writers),
                    )
                self._changed.wait(self._stall_after - stalled)
            if not self._writers:
                self._progress = self._clock()
            self._writers[threading.get_ident()] = write
            self._writes += write

    def leave(self) -> None:
        """Free this thread's slot: a completed call (even a failed one) is progress."""
        with self._changed:
            self._writes -= self._writers.pop(threading.get_ident())
            self._progress = self._clock()
            self._changed.notify_all()

    @property
    def in_flight(self) -> int:
        """Store calls running now (for tests and diagnostics)."""
        return len(self._writers)
