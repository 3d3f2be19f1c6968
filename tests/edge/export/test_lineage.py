"""The lineage written from a run record: the privacy statement's ε equals the ledger's, and it verifies under the
manifest's signature as a device checks it."""

from __future__ import annotations

import hashlib
import json
import time

from edge.agent.config import AgentLimits
from edge.agent.verify import load_public_key, verify_manifest
from edge.delivery.publisher import load_artifact, sign_artifact
from edge.export.lineage import artifact_lineage, run_lineage
from tests.edge.helpers import onnx_model, signing_key


def _client(epsilon: float, sigma: float, q: float, steps: int) -> dict:
    return {
        "epsilon": epsilon,
        "delta": 1e-5,
        "accountant": "rdp",
        "max-grad-norm": 1.0,
        "noise-multiplier": sigma,
        "sample-rate": q,
        "steps": steps,
        "rounds": [1, 2, 3],
    }


def test_the_manifests_privacy_statement_is_the_ledgers_and_verifies_under_the_signature(tmp_path):
    run = tmp_path / "runs" / "heart-1"
    run.mkdir(parents=True)
    ledger = {
        "enabled": True,
        "target-epsilon": 8.0,
        "delta": 1e-5,
        "max-epsilon": 6.3,
        "clients": {
            "0": _client(6.3, 0.9, 0.25, 30),
            "1": _client(4.1, 1.1, 0.1, 60),
            "2": _client(5.0, 1.0, 0.2, 45),
            "3": {"epsilon": 0.0, "rounds": [], "refused-rounds": [1]},  # never trained: not a site that trained
        },
    }
    (run / "privacy.json").write_text(json.dumps(ledger))
    (run / "config.json").write_text(json.dumps({"num-server-rounds": 3}))
    (run / "metrics.json").write_text(json.dumps({"rounds": [{"round": r} for r in range(4)]}))
    (run / "model.pt").write_bytes(b"weights")
    lineage = run_lineage(run)
    assert lineage["rounds"] == 3 and lineage["sites-trained"] == 3
    assert lineage["model-sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert lineage["config-sha256"] == hashlib.sha256((run / "config.json").read_bytes()).hexdigest()
    privacy = lineage["privacy"]
    assert privacy["epsilon-max"] == ledger["max-epsilon"] and privacy["epsilon-median"] == 5.0
    # the worst-case client's σ, q and steps: those behind the largest ε
    assert (privacy["noise-multiplier"], privacy["sampling-rate"], privacy["steps"]) == (0.9, 0.25, 30)
    assert (privacy["delta"], privacy["clipping-norm"], privacy["accountant"]) == (1e-5, 1.0, "rdp")

    data = onnx_model()
    (tmp_path / "int8.onnx").write_bytes(data)
    description = {
        "schema": "fedge-artifact/1",
        "file": "int8.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "onnx",
        "variant": "int8",
        "dtype": "int8",
        "model": "digits",
        "quantization": {"calibration": "min-max", "calibration-samples": 128, "calibration-source": "held-out"},
        "source": {"run-id": "heart-1", "lineage": lineage, "device-preprocessing": {"scale": 0.0625}},
    }
    description["lineage"] = artifact_lineage(description)
    assert description["lineage"]["recipe"]["calibration"] == "min-max, 128 samples, held-out"
    (tmp_path / "int8.onnx.json").write_text(json.dumps(description))
    model = sign_artifact(load_artifact(tmp_path / "int8.onnx"), signing_key(), targets=("dev-1",))
    keyid, public = load_public_key(signing_key().public_pem())
    manifest = verify_manifest(
        model.envelope,
        trusted={keyid: public},
        limits=AgentLimits(),
        now=time.time(),
        floor_version=0,
        model_format="onnx",
        device_id="dev-1",
        model_ids=("digits",),
    )
    assert manifest.epsilon == ledger["max-epsilon"]
    assert manifest.lineage["privacy"] == privacy and manifest.preprocessing == {"scale": 0.0625}
