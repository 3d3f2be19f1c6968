"""The agent's settings: the limits it enforces (one frozen dataclass, safe defaults) and what it runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge.agent.protocol import BrokerAddress

RUNTIMES = {"onnx": "onnx", "tflite": "tflite"}  # runtime name -> the model format it runs


@dataclass(frozen=True)
class AgentLimits:
    """Every bound the agent enforces on what arrives over the wire. The defaults are safe for a small device.

    A manifest, a command or a chunk larger than its bound is refused before it is parsed; a model larger than
    ``max_model_bytes`` is refused from its manifest, before any chunk is accepted.
    """

    max_manifest_bytes: int = 64 * 1024
    max_command_bytes: int = 4 * 1024
    max_chunk_bytes: int = 1024 * 1024
    max_model_bytes: int = 64 * 1024 * 1024
    #: seconds a transfer may take from an accepted manifest to its last chunk
    transfer_timeout_s: float = 120.0
    #: a manifest or command "issued" this far in the future is still accepted (device clocks drift)
    clock_skew_s: float = 300.0
    #: telemetry messages kept while the broker is away; the oldest are dropped (and counted) past this
    telemetry_buffer_max: int = 10_000


@dataclass(frozen=True)
class AgentConfig:
    """What one agent runs with (parsed once from the command line)."""

    device_id: str
    broker: BrokerAddress
    store: Path
    runtime: str = "onnx"
    trusted_keys: tuple[Path, ...] = ()
    data: Path | None = None
    #: seconds between two telemetry messages
    report_interval_s: float = 2.0
    #: inferences run per telemetry window (one sample at a time)
    samples_per_report: int = 32
    ca_file: Path | None = None
    keepalive_s: int = 10
    limits: AgentLimits = field(default_factory=AgentLimits)

    @property
    def model_format(self) -> str:
        return RUNTIMES[self.runtime]
