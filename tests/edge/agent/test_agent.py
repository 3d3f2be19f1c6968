"""The agent's life without a network: restart, rollback command, telemetry and its buffer, random bytes."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.edge.helpers import FakeTransport, deliver, onnx_model, rollback_command, signed, signing_key


def test_restart_resumes_with_the_model_it_had(running_v1, make_agent, tmp_path):
    deliver(running_v1, signed(onnx_model(), 2))
    restarted = make_agent(tmp_path / "store")
    assert restarted.version == 2 and restarted.runner is not None
    assert restarted.store.state.previous.version == 1
    restarted.on_connect()
    assert restarted.transport.messages("state")[-1]["version"] == 2


def test_restart_with_a_damaged_model_falls_back_to_the_previous(running_v1, make_agent, tmp_path):
    deliver(running_v1, signed(onnx_model(), 2))
    running_v1.store.path(running_v1.store.state.current).write_bytes(b"damaged")
    restarted = make_agent(tmp_path / "store")
    assert restarted.version == 1 and restarted.runner is not None
    assert restarted.store.state.floor_version == 2  # v2 is still never re-accepted


def test_rollback_command_returns_to_the_previous_model_and_keeps_the_floor(running_v1):
    deliver(running_v1, signed(onnx_model(bad=True), 2))
    running_v1.handle("fedge/v1/devices/dev-1/cmd/rollback", rollback_command("dev-1", 2))
    assert running_v1.version == 1
    assert running_v1.transport.outcomes()[-1]["outcome"] == "rolled-back"
    deliver(running_v1, signed(onnx_model(bad=True), 2))  # the bad version replayed
    assert running_v1.transport.outcomes()[-1]["reason"] == "rollback"
    assert running_v1.version == 1


def test_rejects_stale_rollback_command(running_v1):
    running_v1.handle("fedge/v1/devices/dev-1/cmd/rollback", rollback_command("dev-1", 7))
    assert running_v1.transport.outcomes()[-1]["reason"] == "stale-command"
    assert running_v1.version == 1


def test_rejects_rollback_command_for_another_device(running_v1):
    running_v1.handle("fedge/v1/devices/dev-1/cmd/rollback", rollback_command("dev-2", 1))
    assert running_v1.transport.outcomes()[-1]["reason"] == "malformed"
    assert running_v1.version == 1


def test_telemetry_counts_accuracy_and_sequence(running_v1):
    running_v1.infer(50)
    first = running_v1.report()
    running_v1.infer(10)
    second = running_v1.report()
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["inferences"] == 50 and first["labelled"] == 50
    assert first["accuracy"] > 0.7
    assert first["latency_ms_p50"] <= first["latency_ms_p95"]
    assert sum(first["histogram"]) == 50
    assert 0 < first["mean_confidence"] <= 1
    assert (first["model_id"], first["version"]) == ("digits", 1)


def test_telemetry_is_buffered_while_the_broker_is_away(running_v1):
    transport: FakeTransport = running_v1.transport
    transport.connected = False
    for _ in range(5):
        running_v1.report()
    assert len(running_v1.outbox) == 5
    transport.connected = True
    running_v1.on_connect()
    assert [m["seq"] for m in transport.messages("telemetry")] == [1, 2, 3, 4, 5]
    assert len(running_v1.outbox) == 0


def test_full_buffer_drops_the_oldest_and_says_so(make_agent, v1):
    from edge.agent.config import AgentLimits

    agent = make_agent(limits=AgentLimits(telemetry_buffer_max=3))
    deliver(agent, v1)
    agent.transport.connected = False
    for _ in range(5):
        agent.report()
    agent.transport.connected = True
    agent.on_connect()
    sent = agent.transport.messages("telemetry")
    assert [m["seq"] for m in sent] == [3, 4, 5]
    assert agent.report()["dropped"] == 2


TOPICS = st.sampled_from(
    [
        "fedge/v1/devices/dev-1/manifest",
        "fedge/v1/devices/dev-1/cmd/rollback",
        "fedge/v1/devices/dev-1/cmd/other",
        "fedge/v1/models/digits/2/onnx/0",
        "fedge/v1/models/digits/2/onnx/1",
        "fedge/v1/devices/dev-2/manifest",
        "other/topic",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=st.one_of(TOPICS, st.text(max_size=80)), payload=st.binary(max_size=2048))
def test_random_bytes_to_every_handler_never_crash(running_v1, topic, payload):
    running_v1.handle(topic, payload)
    assert running_v1.version == 1 and running_v1.runner is not None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_json_in_signed_envelopes_never_crash(running_v1, data):
    """Validly signed but arbitrary JSON: past the signature check, the schema check must hold."""
    signed_part = data.draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "_type",
                    "spec_version",
                    "model_id",
                    "version",
                    "format",
                    "length",
                    "sha256",
                    "chunk_size",
                    "chunk_sha256",
                    "issued",
                    "expires",
                    "meta",
                    "command",
                    "device_id",
                    "from_version",
                    "reason",
                ]
            ),
            st.one_of(
                st.integers(-5, 2**40),
                st.text(max_size=20),
                st.none(),
                st.lists(st.text(max_size=70)),
                st.dictionaries(st.text(max_size=5), st.integers()),
                st.sampled_from(["fedge-model-manifest", "fedge-command", "onnx", "rollback", "dev-1"]),
            ),
        )
    )
    payload = json.dumps(signing_key().sign(signed_part)).encode()
    running_v1.handle(
        data.draw(st.sampled_from(["fedge/v1/devices/dev-1/manifest", "fedge/v1/devices/dev-1/cmd/rollback"])), payload
    )
    assert running_v1.version == 1


def test_agent_imports_no_torch_flwr_opacus_or_shared_models():
    """In a fresh interpreter: importing every agent module, and its command line, pulls none of them in."""
    code = (
        "import sys, edge.agent, edge.agent.agent, edge.agent.cli, edge.agent.service, edge.agent.link, "
        "edge.agent.runtime, edge.agent.store, edge.agent.verify, edge.agent.protocol, edge.agent.telemetry\n"
        "banned = {'torch', 'flwr', 'opacus', 'shared_models', 'typer', 'rich'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned or m.startswith('edge.delivery'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_agent_command_line_help_runs_without_the_fedge_cli():
    out = subprocess.run([sys.executable, "-m", "edge.agent", "--help"], capture_output=True, text=True, check=True)
    assert "--device-id" in out.stdout and "--runtime" in out.stdout


@functools.cache
def _v2_transfer():
    return signed(onnx_model(), 2)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(-1, 5), payload=st.binary(max_size=1500))
def test_random_chunks_during_a_transfer_never_crash(running_v1, index, payload):
    """The chunk handler with a transfer under way (the one that checks length, hash, order): random bytes as any
    chunk are rejected, the running model stays."""
    model = _v2_transfer()
    if running_v1.pending is None:
        running_v1.handle("fedge/v1/devices/dev-1/manifest", model.envelope)
    assert running_v1.pending is not None
    topic = f"fedge/v1/models/digits/2/onnx/{index}" if index >= 0 else "fedge/v1/models/digits/2/onnx/x"
    running_v1.handle(topic, payload)
    assert running_v1.version == 1 and running_v1.runner is not None
