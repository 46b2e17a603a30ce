"""The hand-off of own writes from the workers to the MQTT publisher process, on a real FIFO.

The publisher process itself (started, restarted and stopped with the server) is tested end to
end in ``test_notifications_e2e.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from iot_config_core import MacAddress
from iot_config_server.publisher import HandOff, read_records


class _EnoughError(Exception):
    """Raised by the test's announce callback once it has every record it waits for."""


def test_own_writes_arrive_in_order_and_a_full_pipe_drops_and_counts_instead_of_blocking(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "own-writes"
    os.mkfifo(fifo, 0o600)
    held = os.open(fifo, os.O_RDWR)  # what the supervisor keeps open; nobody reads yet
    try:
        registry = CollectorRegistry()
        dropped = Counter("dropped", "records dropped", registry=registry)
        hand_off = HandOff(str(fifo))
        hand_off.count_drops(dropped)
        sent: list[MacAddress] = []
        for n in range(100_000):  # far more than a pipe holds: the writes must never block
            mac = MacAddress(0x020000000000 + n)
            hand_off(mac)
            if registry.get_sample_value("dropped_total"):
                break
            sent.append(mac)
        assert registry.get_sample_value("dropped_total") == 1
        assert 100 < len(sent) < 100_000

        received: list[MacAddress] = []

        def announce(macs: list[MacAddress]) -> None:
            received.extend(macs)
            if len(received) >= len(sent):
                raise _EnoughError

        with pytest.raises(_EnoughError):
            read_records(held, announce)
        assert received == sent
        hand_off(MacAddress(1))  # room again: handed off, not dropped
        assert registry.get_sample_value("dropped_total") == 1
    finally:
        os.close(held)
