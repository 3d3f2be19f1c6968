"""Field feedback: a device group whose telemetry degrades against its acceptance report raises one ``degraded``
event (stored, in fleet status, Prometheus), and with the rollback policy the group is rolled back by a signed
command; each device's model ε (from its signed lineage) reaches the fleet table."""

from __future__ import annotations

import json
from pathlib import Path

from edge.delivery.cli import _with_lineage, fleet_table
from edge.delivery.collector import FleetStore
from edge.delivery.feedback import FeedbackConfig, FeedbackLoop, FeedbackMonitor, degraded_events, judge_group
from edge.delivery.publisher import Artifact, ModelPublisher, sign_artifact
from tests.edge.helpers import deliver, onnx_model, signing_key

ACCEPTANCE = {"sha256": "c" * 64, "verdict": "accepted", "worst-site-drop": 0.0, "accuracy-min": 0.9}
LINEAGE = {"run-id": "r1", "acceptance": ACCEPTANCE, "privacy": {"epsilon-max": 2.5, "delta": 1e-5}}


def model(version: int, *, bad: bool = False):
    art = Artifact(Path("m.onnx"), onnx_model(bad), "digits", version, "onnx", lineage=LINEAGE)
    return sign_artifact(art, signing_key(), chunk_size=1024, targets=("dev-1",))


class AgentLink:
    """The server's client, wired straight to one agent (what the broker would carry)."""

    def __init__(self, agent) -> None:
        self.agent = agent

    def publish_all(self, messages, timeout=None) -> None:
        for topic, payload, _ in messages:
            if payload and topic.startswith(f"fedge/v1/devices/{self.agent.device_id}/"):
                self.agent.handle(topic, payload)


def collect(agent, store: FleetStore) -> None:
    """What the collector would store of everything the agent sent so far."""
    for topic, payload, _ in agent.transport.published:
        if payload:
            store.record(topic, payload)
    agent.transport.published.clear()


def test_a_drifting_device_raises_degraded_and_the_policy_rolls_it_back(make_agent, tmp_path):
    agent = make_agent()
    deliver(agent, model(1))
    deliver(agent, model(2, bad=True))  # accepted on the sites, wrong in the field
    assert agent.version == 2
    store = FleetStore(tmp_path / "fleet.db")
    monitor = FeedbackMonitor(store, FeedbackConfig(min_reports=3))
    for _ in range(2):
        agent.infer(20)
        agent.report()
    collect(agent, store)
    assert monitor.check() == []  # too few reports to judge
    for _ in range(2):
        agent.infer(20)
        agent.report()
    collect(agent, store)
    loop = FeedbackLoop(monitor, rollback=ModelPublisher(AgentLink(agent), signing_key()).rollback)
    (event,) = loop.step()
    assert (event.model_id, event.version, event.measure, event.devices) == ("digits", 2, "accuracy", ("dev-1",))
    assert event.value < 0.5 and event.baseline == 0.9
    assert agent.version == 1  # the signed rollback command reached the device
    assert agent.transport.outcomes()[-1]["outcome"] == "rolled-back"
    (stored,) = degraded_events(store)
    assert stored["action"] == "rollback" and stored["devices"] == ["dev-1"]
    assert loop.step() == []  # raised once per group and version
    # visible in Prometheus
    from edge.delivery.metrics import FleetMetrics, metrics_text

    text = metrics_text(FleetMetrics(store)).decode()
    assert (
        'fedge_fleet_degraded_events_total{action="rollback",measure="accuracy",model_id="digits",version="2"} 1.0'
        in text
    )
    # and the agent still takes a good update
    deliver(agent, model(3))
    assert agent.version == 3


def test_a_healthy_group_raises_nothing(make_agent, tmp_path):
    agent = make_agent()
    deliver(agent, model(1))
    store = FleetStore(tmp_path / "fleet.db")
    for _ in range(6):
        agent.infer(20)
        agent.report()
    collect(agent, store)
    assert FeedbackMonitor(store).check() == []


def test_without_labels_histogram_and_confidence_drift_count():
    config = FeedbackConfig(min_reports=2, window_reports=2)
    steady = {"labelled": 0, "correct": 0, "inferences": 10, "mean_confidence": 0.9}
    first = [{**steady, "histogram": json.dumps([5, 5, 0])}] * 2
    same = [{**steady, "histogram": json.dumps([4, 6, 0])}] * 2
    assert judge_group("m", 1, ["d"], first + same, None, config) is None
    shifted = [{**steady, "histogram": json.dumps([0, 1, 9])}] * 2
    event = judge_group("m", 1, ["d"], first + shifted, None, config)
    assert event is not None and event.measure == "histogram" and event.value > 0.3
    unsure = [{**steady, "mean_confidence": 0.5, "histogram": json.dumps([5, 5, 0])}] * 2
    event = judge_group("m", 1, ["d"], first + unsure, None, config)
    assert event is not None and event.measure == "mean-confidence"


def test_the_fleet_table_shows_each_devices_model_epsilon(make_agent, tmp_path):
    agent = make_agent()
    deliver(agent, model(1))
    store = FleetStore(tmp_path / "fleet.db")
    collect(agent, store)
    (row,) = _with_lineage(store)
    assert row["epsilon"] == 2.5
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(fleet_table([row]))
    assert "2.50" in console.export_text()


def test_a_group_that_drifts_again_on_its_rolled_back_version_is_held_not_rolled_back_in_a_loop(make_agent, tmp_path):
    agent = make_agent()
    deliver(agent, model(1))
    deliver(agent, model(2))
    agent.samples.y = (agent.samples.y + 1) % 10  # the drift is in the field's data: every version suffers
    store = FleetStore(tmp_path / "fleet.db")
    loop = FeedbackLoop(
        FeedbackMonitor(store, FeedbackConfig(min_reports=3)),
        rollback=ModelPublisher(AgentLink(agent), signing_key()).rollback,
    )
    for _ in range(4):
        agent.infer(20)
        agent.report()
    collect(agent, store)
    (event,) = loop.step()
    assert event.version == 2 and agent.version == 1  # rolled back once
    for _ in range(4):
        agent.infer(20)
        agent.report()
    collect(agent, store)
    (again,) = loop.step()
    assert again.version == 1 and again.measure == "accuracy"
    assert agent.version == 1 and agent.last_update["outcome"] == "rolled-back"  # no second command (or refusal)
    actions = {e["version"]: e["action"] for e in degraded_events(store)}
    assert actions[2] == "rollback" and actions[1].startswith("held: rolled back here from v2")
    # and the agent still takes a good update
    deliver(agent, model(3))
    assert agent.version == 3
