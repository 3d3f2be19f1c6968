"""The collector's writer survives a message it cannot store: the rest of the batch is stored, nothing goes quiet."""

from __future__ import annotations

import time

from edge.agent.protocol import BrokerAddress
from edge.delivery.collector import FleetCollector


class _Store:
    """Stores messages, but fails on one topic (a database error for that row)."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def record_many(self, messages):
        if any(topic.endswith("bad/telemetry") for topic, _, _ in messages):
            raise RuntimeError("disk says no")
        self.stored += [topic for topic, _, _ in messages]
        return [None] * len(messages)


def test_a_failing_write_does_not_stop_the_writer():
    store = _Store()
    collector = FleetCollector(BrokerAddress.parse("mqtt://127.0.0.1:1"), store, client_id="t")  # never connected
    collector._writer.start()
    try:
        for device in ("a", "bad", "c"):
            collector._inbox.append((f"fedge/devices/{device}/telemetry", b"{}", time.time(), 0, 0))
        deadline = time.monotonic() + 10
        while collector.received < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        collector._inbox.append(("fedge/devices/d/telemetry", b"{}", time.time(), 0, 0))  # and it keeps going
        while collector.received < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        collector._stop.set()
        collector._writer.join(5)
    assert store.stored == ["fedge/devices/a/telemetry", "fedge/devices/c/telemetry", "fedge/devices/d/telemetry"]
    assert collector.write_errors == 1
