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


def load_trusted_keys(paths: tuple[Path, ...] | list[Path]) -> TrustedKeys:
    """The server keys a device trusts (PEM files written by ``fedge keygen``)."""
    if not paths:
        raise AgentConfigError("no trusted key: pass --trust SERVER.pub (written by `fedge keygen`)")
    keys = {}
    for path in paths:
        try:
            keyid, key = load_public_key(Path(path).read_bytes())
        except OSError as e:
            raise AgentConfigError(f"cannot read the trusted key {path}: {e}") from e
        keys[keyid] = key
    return keys


class AgentService:
    """One agent with its MQTT transport and its own thread."""

    def __init__(self, config: AgentConfig, *, trusted: TrustedKeys | None = None) -> None:
        self.config = config
        self.inbox: queue.Queue = queue.Queue()
        self.stop_event = threading.Event()
        trusted = trusted if trusted is not None else load_trusted_keys(config.trusted_keys)
        samples = SampleSource(config.data) if config.data else None
        self.transport = MqttTransport(
            f"fedge-agent-{config.device_id}",
            config.broker,
            inbox=self.inbox,
            ca_file=config.ca_file,
            keepalive=config.keepalive_s,
        )
        self.agent = DeviceAgent(config, trusted=trusted, transport=self.transport, samples=samples)
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
