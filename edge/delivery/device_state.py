"""A device's model lineage for ``fedge inspect DEVICE``: from the fleet database a collector writes, or straight
from the broker (the device's retained state, which every device keeps there: what it runs now, with the signed
lineage and privacy statement its manifest carried).

Both give the same block (:func:`edge.delivery.feedback.state_lineage`): ``device_id``, ``model_id``, ``version``,
``epsilon`` and ``lineage``. The broker answers retained states at once on subscription, so a device with none is
known when ``wait_s`` has passed without one.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from edge.agent.errors import AgentError
from edge.agent.protocol import BrokerAddress, check_id, parse_device_message, parse_topic, state_topic
from edge.delivery import feedback
from edge.delivery.client import ServerClient
from edge.delivery.errors import DeliveryError, as_delivery_error


class NoDeviceStateError(DeliveryError):
    """The broker holds no retained state (or only the last will) for a device: there is no lineage to show."""


def read_retained_state(
    broker: BrokerAddress, device_id: str, *, wait_s: float, ca_file: Path | None = None
) -> dict[str, Any] | None:
    """The device's retained state on ``broker``, validated as the collector validates it; ``None`` when none came
    within ``wait_s`` seconds. An unreachable broker is a :class:`~edge.delivery.errors.BrokerError`."""
    with as_delivery_error():
        check_id("device id", device_id)
    topic = state_topic(device_id)
    received: list[bytes] = []
    arrived = threading.Event()

    def on_message(message_topic: str, payload: bytes) -> None:
        if message_topic == topic and payload and not arrived.is_set():
            received.append(payload)
            arrived.set()

    client = ServerClient(
        f"fedge-inspect-{os.getpid()}",
        broker,
        on_message=on_message,
        subscriptions=(topic,),
        ca_file=ca_file,
        clean_session=True,
    )
    client.connect()
    try:
        arrived.wait(wait_s)
    finally:
        client.close()
    if not received:
        return None
    try:
        return parse_device_message(parse_topic(topic), received[0])
    except AgentError as e:
        raise DeliveryError(f"the retained state of {device_id} on {broker.url()} is malformed: {e}") from e


def device_lineage_on_broker(
    broker: BrokerAddress, device_id: str, *, wait_s: float, ca_file: Path | None = None
) -> dict[str, Any]:
    """The lineage block of the model ``device_id`` runs, from its retained state on ``broker``; a device with no
    retained state there, or only its last will, is a :class:`NoDeviceStateError`."""
    if not wait_s > 0:
        raise DeliveryError(f"the wait for a retained state must be above 0 seconds, got {wait_s!r}: pass --wait S")
    state = read_retained_state(broker, device_id, wait_s=wait_s, ca_file=ca_file)
    if state is None:
        raise NoDeviceStateError(
            f"no retained state of device {device_id} on {broker.url()} within {wait_s:g} s: the device never "
            "connected to this broker (check the id), or its state was cleared"
        )
    block = feedback.state_lineage(state)
    if block is None:
        raise NoDeviceStateError(
            f"device {device_id} is lost (its retained state is the last will, which names no model); what it "
            "last reported is in the fleet database: fedge inspect DEVICE --db FLEET_DB"
        )
    return {"device_id": device_id, **block}


def device_lineage_in_db(db: str, device_id: str) -> dict[str, Any]:
    """The lineage block of the model ``device_id`` runs, as the fleet database ``db`` (a SQLite file or a
    ``postgresql://`` URL) kept it from its retained state."""
    from edge.delivery.collector import open_fleet_store
    from edge.delivery.fleet_db import is_postgres_url

    if not is_postgres_url(db) and not Path(db).is_file():
        raise DeliveryError(
            f"{device_id} is no file, and {db} does not exist to look a device up in: pass --db, or --broker to "
            "read the device's retained state"
        )
    store = open_fleet_store(db, read_only=True)
    try:
        known = feedback.device_lineage(store).get(device_id)
    finally:
        store.close()
    if known is None:
        raise DeliveryError(f"no device {device_id} with a model lineage in {db}; is `fedge fleet collect` running?")
    return known
