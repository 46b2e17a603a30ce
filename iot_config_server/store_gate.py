"""A bound on request threads inside store calls, so a hung store cannot take the whole server.

Every request runs on one of a worker's ``threads``. If the store hangs (a stalled CephFS mount,
a distant bucket), requests pile up inside store calls until no thread is left, and then even
``/api/health/live`` and ``/metrics`` wait: Kubernetes would restart a healthy pod whose storage is
merely slow. The gate admits at most ``threads - 2`` store calls at a time, so two threads are
always left for the endpoints that never touch the store.

When every slot is taken, a request waits for one while the calls holding them are young (a
healthy store frees a slot in microseconds; a thread can just be waiting for the GIL). Once the
oldest call has run for ``slow_after`` seconds the store is hanging, and further requests are shed
at once with 503 ``STORE_BUSY`` and ``Retry-After``, so they cost the spare threads nothing.
"""

from __future__ import annotations

import threading
import time

from .http_errors import ApiError, ApiErrorCode

__all__ = ["DEFAULT_SLOW_AFTER_SECONDS", "RESERVED_THREADS", "StoreGate"]

#: Threads kept free of store calls for liveness and metrics.
RESERVED_THREADS = 2
#: A store call running this long means the store is hanging, not merely busy. Well below a
#: Kubernetes liveness probe's default 1 s timeout.
DEFAULT_SLOW_AFTER_SECONDS = 0.1


class StoreGate:
    """Tracks store calls in flight; `enter` admits or sheds, `leave` frees the slot."""

    def __init__(self, threads: int, *, slow_after: float = DEFAULT_SLOW_AFTER_SECONDS) -> None:
        self.slots = max(1, threads - RESERVED_THREADS)
        self._slow_after = slow_after
        self._started: dict[int, float] = {}  # thread id -> when its store call began
        self._waiting = 0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)

    def enter(self) -> None:
        """Take a slot for this thread's store call, or raise 503 ``STORE_BUSY``."""
        now = time.monotonic()
        with self._lock:
            started = self._started
            while len(started) >= self.slots:
                age = now - min(started.values())
                if age >= self._slow_after:
                    raise ApiError(
                        ApiErrorCode.STORE_BUSY,
                        f"the store is not answering: {len(started)} requests have waited on "
                        f"it, the longest for {age:.1f} s",
                        in_flight=len(started),
                    )
                self._waiting += 1
                try:
                    self._freed.wait(self._slow_after - age)
                finally:
                    self._waiting -= 1
                now = time.monotonic()
            started[threading.get_ident()] = now

    def leave(self) -> None:
        """Free this thread's slot."""
        with self._lock:
            del self._started[threading.get_ident()]
            if self._waiting:
                self._freed.notify()

    @property
    def in_flight(self) -> int:
        """Store calls running now (for tests and diagnostics)."""
        return len(self._started)
