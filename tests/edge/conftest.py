from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge.agent.agent import DeviceAgent
from edge.agent.config import AgentConfig, AgentLimits
from edge.agent.protocol import BrokerAddress, parse_topic
from edge.agent.telemetry import SampleSource
from edge.agent.verify import load_public_key
from edge.delivery.publisher import Artifact, SignedModel, sign_artifact
from tests.edge.helpers import onnx_model, signing_key, write_samples


class FakeTransport:
    """An in-memory broker connection: records what the agent publishes and subscribes to."""

    def __init__(self) -> None:
        self.connected = True
        self.published: list[tuple[str, bytes, bool]] = []
        self.subscribed: set[str] = set()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        self.subscribed.add(topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        self.subscribed.discard(topic_filter)

    def messages(self, kind: str) -> list[dict]:
        out = []
        for topic, payload, _ in self.published:
            parsed = parse_topic(topic)
            if parsed is not None and parsed.kind == kind and payload:
                out.append(json.loads(payload))
        return out

    def outcomes(self) -> list[dict]:
        return self.messages("events")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def signed(
    data: bytes,
    version: int,
    *,
    fmt: str = "onnx",
    key=None,
    chunk_size: int = 1024,
    expires_in_s: float = 3600,
    now: float | None = None,
    model_id: str = "digits",
    targets: tuple[str, ...] = ("dev-1",),
    group: str = "",
) -> SignedModel:
    """A model signed for ``targets`` (the test agent, dev-1, by default) and/or ``group``."""
    art = Artifact(Path(f"m.{fmt}"), data, model_id, version, fmt, {})
    return sign_artifact(
        art,
        key or signing_key(),
        chunk_size=chunk_size,
        expires_in_s=expires_in_s,
        now=now,
        targets=targets,
        group=group,
    )


def deliver(agent: DeviceAgent, model: SignedModel, *, chunks: list[tuple[str, bytes, bool]] | None = None) -> None:
    agent.handle(f"fedge/v1/devices/{agent.device_id}/manifest", model.envelope)
    for topic, payload, _ in chunks if chunks is not None else model.chunk_messages():
        agent.handle(topic, payload)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_agent(tmp_path, clock):
    key_id, public = load_public_key(signing_key().public_pem())
    samples = write_samples(tmp_path / "samples.npz")

    def make(
        store: Path | None = None,
        *,
        runtime: str = "onnx",
        limits: AgentLimits | None = None,
        transport: FakeTransport | None = None,
        model_ids: tuple[str, ...] = ("digits",),
        group: str | None = None,
        trusted: dict | None = None,
        root: dict | None = None,
    ) -> DeviceAgent:
        config = AgentConfig(
            device_id="dev-1",
            broker=BrokerAddress("127.0.0.1", 1),
            store=store or tmp_path / "store",
            model_ids=model_ids,
            runtime=runtime,
            group=group,
            limits=limits or AgentLimits(),
        )
        return DeviceAgent(
            config,
            trusted={key_id: public} if trusted is None else trusted,
            transport=transport or FakeTransport(),
            samples=SampleSource(samples),
            clock=clock,
            root=root,
        )

    return make


@pytest.fixture
def v1() -> SignedModel:
    return signed(onnx_model(), 1)


@pytest.fixture
def running_v1(make_agent, v1) -> DeviceAgent:
    agent = make_agent()
    deliver(agent, v1)
    assert agent.version == 1
    return agent
