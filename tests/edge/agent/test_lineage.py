"""The signed lineage and privacy statement, and the declared device preprocessing, carried by the manifest: kept
with the model in the store, published in the retained state, applied by the live agent and again after a restart;
a statement changed on the way fails the signature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.agent.protocol import Manifest
from edge.agent.telemetry import SampleSource
from edge.delivery.publisher import Artifact, sign_artifact
from tests.edge.helpers import deliver, digits_split, onnx_model, rollback_command, signed, signing_key

MANIFEST = "fedge/v1/devices/dev-1/manifest"

LINEAGE = {
    "run-id": "heart-20260101-000000-abc123",
    "config-sha256": "a" * 64,
    "rounds": 3,
    "sites-trained": 3,
    "model-sha256": "b" * 64,
    "recipe": {"variant": "int8", "sparsity": None, "calibration": "held-out (128 samples)"},
    "acceptance": {"sha256": "c" * 64, "verdict": "accepted", "worst-site-drop": 0.0},
    "privacy": {
        "epsilon-max": 2.99,
        "epsilon-median": 2.5,
        "delta": 1e-5,
        "noise-multiplier": 1.1,
        "clipping-norm": 1.0,
        "sampling-rate": 0.1,
        "steps": 40,
        "accountant": "rdp",
    },
}


def lineage_model(version: int, *, lineage=None, preprocessing=None, data: bytes | None = None):
    art = Artifact(
        path=Path("m.onnx"),
        data=data or onnx_model(),
        model_id="digits",
        version=version,
        format="onnx",
        preprocessing=preprocessing or {},
        lineage=LINEAGE if lineage is None else lineage,
    )
    return sign_artifact(art, signing_key(), chunk_size=1024, expires_in_s=3600, targets=("dev-1",))


def test_the_lineage_is_kept_with_the_model_and_published_in_the_retained_state(running_v1, make_agent):
    deliver(running_v1, lineage_model(2))
    assert running_v1.version == 2
    assert running_v1.store.state.current.lineage == LINEAGE
    state = running_v1.transport.messages("state")[-1]
    assert state["lineage"]["privacy"]["epsilon-max"] == 2.99
    assert state["lineage"]["run-id"] == LINEAGE["run-id"]
    # a restarted agent publishes it again, from its store
    restarted = make_agent()
    assert json.loads(restarted.state_payload())["lineage"] == LINEAGE


def test_rejects_tampered_privacy_statement(running_v1):
    """ε lowered on the way (a manifest that claims more privacy than the run had): the signature covers it."""
    envelope = json.loads(lineage_model(2).envelope)
    envelope["signed"]["lineage"]["privacy"]["epsilon-max"] = 0.5
    running_v1.handle(MANIFEST, json.dumps(envelope).encode())
    last = running_v1.transport.outcomes()[-1]
    assert (last["outcome"], last["reason"]) == ("rejected", "bad-signature")
    assert running_v1.version == 1 and running_v1.runner is not None
    assert "lineage" not in running_v1.transport.messages("state")[-1]
    # and the agent still takes a good update, with its statement
    deliver(running_v1, lineage_model(3))
    assert running_v1.version == 3
    assert running_v1.transport.messages("state")[-1]["lineage"]["privacy"]["epsilon-max"] == 2.99


def test_rejects_tampered_preprocessing(running_v1):
    envelope = json.loads(lineage_model(2, preprocessing={"scale": 0.5}).envelope)
    envelope["signed"]["preprocessing"]["scale"] = 100.0
    running_v1.handle(MANIFEST, json.dumps(envelope).encode())
    assert running_v1.transport.outcomes()[-1]["reason"] == "bad-signature"
    assert running_v1.version == 1
    deliver(running_v1, lineage_model(3))
    assert running_v1.version == 3


def test_rejects_a_preprocessing_the_device_cannot_apply(running_v1):
    """An unknown step, signed (a newer publisher, a typo): refused before the swap, the old model serves."""
    deliver(running_v1, lineage_model(2, preprocessing={"whiten": True}))
    last = running_v1.transport.outcomes()[-1]
    assert (last["outcome"], last["reason"]) == ("rejected", "does-not-load")
    assert "whiten" in last["detail"]
    assert running_v1.version == 1
    deliver(running_v1, lineage_model(3))
    assert running_v1.version == 3


def test_rejects_malformed_privacy_statement():
    signed_part = lineage_model(2).manifest.to_signed()
    signed_part["lineage"] = {**LINEAGE, "privacy": {**LINEAGE["privacy"], "epsilon-max": -1}}
    with pytest.raises(Exception, match="epsilon-max"):
        Manifest.from_signed(signed_part)


def test_a_manifest_without_lineage_or_preprocessing_is_signed_as_before():
    plain = signed(onnx_model(), 2).manifest.to_signed()
    assert "lineage" not in plain and "preprocessing" not in plain
    assert lineage_model(2).manifest.epsilon == 2.99


def _raw_rows(tmp_path):
    """The digits rows as a device would read them raw: every feature with its own scale and offset. The declared
    standardization (mean = offset, std = scale) gives back what the model was trained on."""
    _, _, x, y = digits_split()
    rng = np.random.default_rng(0)
    std = rng.uniform(0.5, 4.0, 64).astype(np.float32)
    mean = rng.uniform(-3.0, 3.0, 64).astype(np.float32)
    path = tmp_path / "raw.npz"
    np.savez(path, x=x * std + mean, y=y)
    return path, {"standardize": {"mean": mean.tolist(), "std": std.tolist()}}


def _accuracy(agent, samples, n: int = 200) -> float:
    agent.samples = SampleSource(samples)
    agent.infer(n)
    return agent.report()["accuracy"]


def test_the_live_agent_applies_the_declared_preprocessing_and_again_after_a_restart(tmp_path, make_agent):
    raw, preprocessing = _raw_rows(tmp_path)
    plain = make_agent(tmp_path / "plain")
    deliver(plain, lineage_model(1))
    without = _accuracy(plain, raw)

    agent = make_agent(tmp_path / "store")
    deliver(agent, lineage_model(1, preprocessing=preprocessing))
    assert agent.transport.outcomes()[-1]["outcome"] == "applied"
    with_steps = _accuracy(agent, raw)
    assert with_steps > 0.85 and without < 0.5, (with_steps, without)
    assert agent.store.state.current.preprocessing == preprocessing

    restarted = make_agent(tmp_path / "store")
    assert restarted.version == 1
    assert _accuracy(restarted, raw) == with_steps
    sample = np.load(raw)["x"][0]
    assert np.allclose(restarted.runner.predict(sample), agent.runner.predict(sample))

    # a rollback to a model stored with its preprocessing applies that model's own steps
    deliver(restarted, lineage_model(2))  # no preprocessing declared
    assert _accuracy(restarted, raw) < 0.5
    restarted.handle("fedge/v1/devices/dev-1/cmd/rollback", rollback_command("dev-1", 2, now=restarted.clock()))
    assert restarted.version == 1
    assert _accuracy(restarted, raw) == with_steps
