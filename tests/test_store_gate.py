"""The store gate sheds only a store that stops completing calls, never a long healthy queue.

The gate reads time from a clock the tests move by hand, so "the store took 0.1 s per call" or
"nothing completed for a minute" is exact however busy the machine is.
"""

from __future__ import annotations

import threading

import pytest

from iot_config_server.http_errors import ApiError
from iot_config_server.store_gate import RESERVED_THREADS, StoreGate

WAIT = 10.0  # real seconds a test waits for a thread before calling the gate broken


class Clock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class Holder:
    """A thread inside a store call until released: a hung (or just slow) call."""

    def __init__(self, gate: StoreGate, *, write: bool = False) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.error: ApiError | None = None
        self._gate = gate
        self._write = write
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._gate.enter(write=self._write)
        except ApiError as exc:
            self.error = exc
            self.entered.set()
            return
        self.entered.set()
        try:
            self.release.wait(WAIT)
        finally:
            self._gate.leave()

    def finish(self) -> None:
        self.release.set()
        self.thread.join(WAIT)


def test_two_threads_never_wait_inside_the_store() -> None:
    gate = StoreGate(8)
    assert gate.slots == 8 - RESERVED_THREADS
    assert gate.write_slots == gate.slots - 1  # a read always finds a slot writes cannot take
    assert (StoreGate(1).slots, StoreGate(1).write_slots) == (1, 1)  # nothing to reserve


def test_a_long_queue_on_a_progressing_store_is_never_shed() -> None:
    """Ten times more calls than slots, each 0.1 s, queue for 2 s: all of them get in."""
    clock = Clock()
    gate = StoreGate(4, stall_after=0.5, clock=clock)
    errors: list[ApiError] = []
    done = threading.Semaphore(0)

    def call() -> None:
        try:
            gate.enter(write=True)
        except ApiError as exc:
            errors.append(exc)
        else:
            clock.advance(0.1)  # the call takes 0.1 s, then completes
            gate.leave()
        done.release()

    threads = [threading.Thread(target=call) for _ in range(gate.slots * 10)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert done.acquire(timeout=WAIT)
    assert errors == []
    assert clock.now - 1000.0 == pytest.approx(0.1 * len(threads))  # far beyond stall_after
    assert gate.in_flight == 0


def test_a_hung_store_sheds_at_once_and_reopens_when_a_call_completes() -> None:
    clock = Clock()
    gate = StoreGate(4, stall_after=0.5, clock=clock)
    holders = [Holder(gate) for _ in range(gate.slots)]
    for holder in holders:
        assert holder.entered.wait(WAIT)
    waiter = Holder(gate)  # finds no slot: waits while the store may still be progressing
    assert not waiter.entered.wait(0.1)
    clock.advance(0.6)  # no call completes for longer than stall_after: hung
    assert waiter.entered.wait(WAIT)  # the waiter gave up within stall_after (real time)
    assert waiter.error is not None
    assert waiter.error.code == "STORE_BUSY"
    assert waiter.error.details["in_flight"] == gate.slots
    with pytest.raises(ApiError) as shed:
        gate.enter()  # newcomers are shed without waiting at all
    assert shed.value.code == "STORE_BUSY"
    assert gate.in_flight == gate.slots  # shed requests took nothing
    holders[0].finish()  # one call completes: the store is alive again
    gate.enter()
    gate.leave()
    for holder in holders[1:]:
        holder.finish()
    assert gate.in_flight == 0


def test_slow_writes_never_hold_up_reads() -> None:
    """Writes stuck on a slow fsync fill their slots; a device read still gets in at once."""
    clock = Clock()
    gate = StoreGate(5, stall_after=5, clock=clock)  # waiters re-check only every 5 real s
    writers = [Holder(gate, write=True) for _ in range(gate.write_slots)]
    for writer in writers:
        assert writer.entered.wait(WAIT)
    queued = Holder(gate, write=True)
    assert not queued.entered.wait(0.1)  # another write waits for a write slot
    clock.advance(60)  # the writes hang for a minute
    gate.enter()  # but a read is admitted
    gate.leave()  # and its completion is progress, so the queued write is not shed either
    assert not queued.entered.wait(0.1)
    writers[0].finish()
    assert queued.entered.wait(WAIT)
    assert queued.error is None
    queued.finish()
    for writer in writers[1:]:
        writer.finish()
    assert gate.in_flight == 0


def test_an_idle_store_is_not_taken_for_a_hung_one() -> None:
    """Hours without calls are not a stall: the clock starts when calls begin."""
    clock = Clock()
    gate = StoreGate(3, stall_after=0.5, clock=clock)
    clock.advance(3600)
    holder = Holder(gate)
    assert holder.entered.wait(WAIT)
    waiter = Holder(gate)
    assert not waiter.entered.wait(0.1)  # waits instead of being shed
    holder.finish()
    assert waiter.entered.wait(WAIT)
    assert waiter.error is None
    waiter.finish()
