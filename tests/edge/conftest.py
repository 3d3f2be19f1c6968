from __future__ import annotations

from pathlib import Path

import pytest

from edge.agent.agent import DeviceAgent
from edge.agent.config import AgentConfig, AgentLimits
from edge.agent.protocol import BrokerAddress
from edge.agent.telemetry import SampleSource
from edge.agent.verify import load_public_key
from edge.delivery.publisher import SignedModel
from tests.edge.helpers import Clock, FakeTransport, deliver, onnx_model, signed, signing_key, write_samples


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
