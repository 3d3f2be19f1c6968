"""Wiring one agent to the broker and running it until told to stop (used by the command line, the demo and the
benchmark, which runs many agents in one process)."""

from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path

from edge.agent.agent import DeviceAgent
from edge.agent.config import AgentConfig
from edge.agent.errors import AgentConfigError
from edge.agent.link import MqttTransport
from edge.agent.protocol import lost_message, state_topic
from edge.agent.telemetry import SampleSource
from edge.agent.verify import TrustedKeys, load_public_key

log = logging.getLogger("fedge.agent")


def load_trusted_keys(paths: tuple[Path, ...] | list[Path], *, required: bool = True) -> TrustedKeys:
    """The server keys a device trusts (PEM files written by ``fedge keygen``)."""
    if not paths and required:
        raise AgentConfigError(
            "no trusted key: pass --trust SERVER.pub (`fedge keygen`) or --trust-root ROOT.pub (`fedge keygen --root`)"
        )
    keys = {}
    for path in paths:
        try:
            keyid, key = load_public_key(Path(path).read_bytes())
        except OSError as e:
            raise AgentConfigError(f"cannot read the trusted key {path}: {e}") from e
        keys[keyid] = key
    return keys


def client_id_of(device_id: str) -> str:
    """A device's MQTT client id is its device id, which is also its broker user name: Mosquitto as fedge
    configures it (``use_username_as_clientid``) replaces any client id by the user name, so one device's
    credentials can never take over another device's session."""
    return device_id


class AgentService:
    """One agent with its MQTT transport and its own thread."""

    def __init__(self, config: AgentConfig, *, trusted: TrustedKeys | None = None) -> None:
        self.config = config
        # bounded: a flood waits in the broker (the network thread blocks), not in the device's memory
        self.inbox: queue.Queue = queue.Queue(maxsize=config.limits.inbox_messages)
        self.stop_event = threading.Event()
        root = load_trusted_keys((config.trust_root,)) if config.trust_root else None
        if trusted is None:
            trusted = load_trusted_keys(config.trusted_keys, required=root is None)
        samples = SampleSource(config.data) if config.data else None
        self.transport = MqttTransport(
            client_id_of(config.device_id),
            config.broker,
            inbox=self.inbox,
            ca_file=config.ca_file,
            keepalive=config.keepalive_s,
        )
        self.agent = DeviceAgent(config, trusted=trusted, transport=self.transport, samples=samples, root=root)
        will = lost_message(config.device_id, config.runtime, self.agent.session)
        self.transport.client.will_set(state_topic(config.device_id), json.dumps(will).encode(), qos=1, retain=True)
        self.thread = threading.Thread(target=self._run, name=f"agent-{config.device_id}", daemon=True)

    def _run(self) -> None:
        self.agent.run(self.inbox, self.stop_event)

    def start(self) -> AgentService:
        self.transport.start()
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop cleanly: the retained state says ``disconnected`` (not ``lost``)."""
        self.stop_event.set()
        self.thread.join(timeout)
        self.transport.stop(last=(state_topic(self.config.device_id), self.agent.state_payload("disconnected")))
