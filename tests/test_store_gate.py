"""The store gate keeps threads free for liveness when store calls hang."""

from __future__ import annotations

import threading
import time

import pytest

from iot_config_server.http_errors import ApiError
from iot_config_server.store_gate import RESERVED_THREADS, StoreGate


def _hold(gate: StoreGate, release: threading.Event, entered: threading.Semaphore) -> None:
    gate.enter()
    entered.release()
    try:
        release.wait(10)
    finally:
        gate.leave()


def _fill(gate: StoreGate, release: threading.Event) -> list[threading.Thread]:
    entered = threading.Semaphore(0)
    holders = [
        threading.Thread(target=_hold, args=(gate, release, entered)) for _ in range(gate.slots)
    ]
    for holder in holders:
        holder.start()
    for _ in holders:
        assert entered.acquire(timeout=5)
    return holders


def test_two_threads_stay_free_of_store_calls() -> None:
    assert StoreGate(8).slots == 8 - RESERVED_THREADS
    assert StoreGate(1).slots == 1  # nothing to reserve: the one thread still serves


def test_a_gate_full_of_hanging_calls_sheds() -> None:
    gate = StoreGate(4, slow_after=0.05)
    release = threading.Event()
    holders = _fill(gate, release)
    try:
        started = time.monotonic()
        with pytest.raises(ApiError) as info:
            gate.enter()
        waited = time.monotonic() - started
        assert info.value.code == "STORE_BUSY"
        assert info.value.details["in_flight"] == gate.slots
        assert 0.04 <= waited < 2  # it waited while the calls were young
        assert gate.in_flight == gate.slots  # the shed request took nothing
        started = time.monotonic()
        with pytest.raises(ApiError):
            gate.enter()
        assert time.monotonic() - started < 0.04  # the store is hanging: shed at once
    finally:
        release.set()
        for holder in holders:
            holder.join(5)
    assert gate.in_flight == 0
    gate.enter()  # and once the store answers again, requests get in
    gate.leave()


def test_a_waiter_gets_the_slot_a_finished_call_frees() -> None:
    gate = StoreGate(3, slow_after=5)
    release = threading.Event()
    holders = _fill(gate, release)
    admitted = threading.Event()

    def waiter() -> None:
        gate.enter()
        admitted.set()
        gate.leave()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    assert not admitted.is_set()  # all slots taken: it waits
    release.set()  # the holders finish, and one of them hands over its slot
    assert admitted.wait(5)
    thread.join(5)
    for holder in holders:
        holder.join(5)
    assert gate.in_flight == 0
