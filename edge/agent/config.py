"""The agent's settings: the limits it enforces (one frozen dataclass, safe defaults) and what it runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge.agent.errors import AgentConfigError
from edge.agent.protocol import FORMATS, MAX_TOPIC_LENGTH, BrokerAddress, is_id

#: runtime name -> the model format it runs (onnxruntime runs ONNX, LiteRT runs TFLite)
RUNTIMES = {fmt: fmt for fmt in FORMATS}


@dataclass(frozen=True)
class AgentLimits:
    """Every bound the agent enforces on what arrives over the wire. The defaults are safe for a small device.

    A manifest, a command or a chunk larger than its bound is refused before it is parsed; a model larger than
    ``max_model_bytes`` is refused from its manifest, before any chunk is accepted. Every buffer and cache the agent
    keeps is bounded here: hostile input (many distinct topics, junk payloads) costs a bounded amount of memory.
    At most one transfer is pending at a time (a new accepted manifest replaces it), holding at most
    ``max_model_bytes``.
    """

    max_manifest_bytes: int = 64 * 1024
    max_command_bytes: int = 4 * 1024
    max_keyset_bytes: int = 16 * 1024
    max_chunk_bytes: int = 1024 * 1024
    max_model_bytes: int = 64 * 1024 * 1024
    #: seconds a transfer may take from an accepted manifest to its last chunk
    transfer_timeout_s: float = 120.0
    #: a manifest or command "issued" this far in the future is still accepted (device clocks drift)
    clock_skew_s: float = 300.0
    #: telemetry messages kept while the broker is away; the oldest are dropped (and counted) past this
    telemetry_buffer_max: int = 10_000
    #: topics longer than this are refused unparsed (fedge's own are about 120 characters at most)
    max_topic_length: int = MAX_TOPIC_LENGTH
    #: parsed topics kept (only topics that parse; unknown ones are never cached)
    topic_cache_entries: int = 256
    #: digests of rejected payloads remembered, so a retained bad message is reported once, not on every reconnect
    reported_rejections: int = 64
    #: messages waiting between the network thread and the agent's thread; past this the network thread waits
    #: (the broker keeps the rest: back-pressure instead of memory)
    inbox_messages: int = 256


@dataclass(frozen=True)
class AgentConfig:
    """What one agent runs with (parsed once from the command line)."""

    device_id: str
    broker: BrokerAddress
    store: Path
    #: the model ids this device runs: a manifest for any other model id is refused (``not-addressed``)
    model_ids: tuple[str, ...]
    runtime: str = "onnx"
    #: signing keys trusted directly (PEM); with ``trust_root`` also the keys of the newest root-signed key set
    trusted_keys: tuple[Path, ...] = ()
    #: the root key (PEM) whose signed key sets name the signing keys (``fedge keygen --root``)
    trust_root: Path | None = None
    #: the device group this device belongs to (a manifest may be addressed to a group)
    group: str | None = None
    data: Path | None = None
    #: seconds between two telemetry messages
    report_interval_s: float = 2.0
    #: inferences run per telemetry window (one sample at a time)
    samples_per_report: int = 32
    ca_file: Path | None = None
    keepalive_s: int = 10
    limits: AgentLimits = field(default_factory=AgentLimits)

    def __post_init__(self) -> None:
        if not is_id(self.device_id):
            raise AgentConfigError(f"device id {self.device_id!r} is not valid: use 1-64 characters of [a-z0-9-]")
        if isinstance(self.model_ids, str) or not self.model_ids:
            raise AgentConfigError("name the model ids this device runs (--model-id, repeatable)")
        for model_id in self.model_ids:
            if not is_id(model_id):
                raise AgentConfigError(f"model id {model_id!r} is not valid: use 1-64 characters of [a-z0-9-]")
        if self.group is not None and not is_id(self.group):
            raise AgentConfigError(f"group {self.group!r} is not valid: use 1-64 characters of [a-z0-9-]")
        if self.runtime not in RUNTIMES:
            raise AgentConfigError(f"unknown runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")

    @property
    def model_format(self) -> str:
        return RUNTIMES[self.runtime]
