"""Compare-and-swap across real processes sharing one directory (as server replicas on CephFS)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from iot_config_core import (
    MacAddress,
    PreconditionFailedError,
    compute_etag,
    encode_document,
    open_store,
)
from iot_config_core.testing import cas_increment

MAC = MacAddress.parse("aa:bb:cc:00:00:02")
PROCESSES = 4
RACE_ROUNDS = 8
INCREMENTS = 20
# spawn, not fork: a fresh interpreter per worker, like a separate server replica.
CONTEXT = multiprocessing.get_context("spawn")


def race_worker(
    root: str, index: int, rounds: int, barrier: Barrier, results: Queue[tuple[int, int, str, str]]
) -> None:
    store = open_store(root)
    for round_ in range(rounds):
        base = compute_etag(encode_document({"round": round_}))
        barrier.wait()  # the parent has written this round's base version
        try:
            stored = store.put(MAC, {"round": round_, "winner": index}, if_match=base)
            results.put((round_, index, "won", stored.etag))
        except PreconditionFailedError as exc:
            results.put((round_, index, "lost", str(exc.current_etag)))
        barrier.wait()  # everyone has tried; the parent checks the outcome


def increment_worker(root: str, times: int, results: Queue[int]) -> None:
    results.put(cas_increment(open_store(root), MAC, times))


def stop_all(workers: Sequence[BaseProcess]) -> list[int | None]:
    """Join every worker, killing one still alive after 30 s; their exit codes."""
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=10)
    return [worker.exitcode for worker in workers]


def run_increments(roots: Sequence[str], processes: int, times: int) -> list[int]:
    """``processes`` workers each increment MAC's count ``times`` through ``roots`` in turn.

    Every worker must exit 0; returns how often each had to retry its compare-and-swap.
    """
    results: Queue[int] = CONTEXT.Queue()
    workers = [
        CONTEXT.Process(target=increment_worker, args=(roots[i % len(roots)], times, results))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        retries = [results.get(timeout=60) for _ in range(processes)]
    finally:
        exits = stop_all(workers)
    assert exits == [0] * processes
    return retries


@pytest.mark.slow
def test_racing_processes_have_one_winner_per_round(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    barrier = CONTEXT.Barrier(PROCESSES + 1, timeout=60)
    results: Queue[tuple[int, int, str, str]] = CONTEXT.Queue()
    workers = [
        CONTEXT.Process(target=race_worker, args=(str(tmp_path), i, RACE_ROUNDS, barrier, results))
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(RACE_ROUNDS):
            store.put(MAC, {"round": round_})
            barrier.wait()
            barrier.wait()
            outcomes = [results.get(timeout=30) for _ in range(PROCESSES)]
            assert {r for r, *_ in outcomes} == {round_}
            winners = [(i, etag) for _, i, what, etag in outcomes if what == "won"]
            assert len(winners) == 1, outcomes
            ((winner, winner_etag),) = winners
            final = store.get(MAC)
            assert final.content == {"round": round_, "winner": winner}
            assert final.etag == winner_etag
            assert all(etag == winner_etag for *_, etag in outcomes), outcomes
    finally:
        exits = stop_all(workers)
    assert exits == [0] * PROCESSES


@pytest.mark.slow
def test_increment_loops_across_processes_lose_no_update(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put(MAC, {"count": 0})
    retries = run_increments([str(tmp_path)], PROCESSES, INCREMENTS)
    assert store.get(MAC).content == {"count": PROCESSES * INCREMENTS}, retries
    assert all(r >= 0 for r in retries)
