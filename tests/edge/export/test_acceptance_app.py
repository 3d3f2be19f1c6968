"""The acceptance ServerApp against fedge's real ClientApp handler, in-process: three hospitals answer, a node whose
table does not fit is listed as failed (not a site), a silent node is listed with its timeout; too few sites refuses
every artifact, for the publish gate as well, and the next complete acceptance is accepted again."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from flwr.app import Error

from client.client_app import accept
from edge.delivery.acceptance_gate import AcceptanceGate, AcceptanceGateError, check_acceptance
from edge.delivery.publisher import load_artifact
from edge.export.acceptance import AcceptanceError
from edge.export.acceptance_app import run_acceptance
from edge.export.federated_acceptance import AcceptanceSettings, acceptance_run_config
from server.flower_app import write_app_dir
from shared_models.run_config import DEFAULT_RUN_CONFIG
from shared_models.run_dir import RunDir
from tests.client.heart import HEART, heart_model, mlp_onnx, narrow_table, node_context, write_artifact
from tests.server.scripted_grid import ScriptedGrid

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("task_identity")

HOSPITALS = ("hungarian", "switzerland", "va")


class AnsweringGrid(ScriptedGrid):
    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def _run_dir(tmp_path):
    run = RunDir(tmp_path / "runs" / "hd")
    run.path.mkdir(parents=True)
    model = heart_model()
    torch.save(model.state_dict(), run.model)
    run.model_info.write_text(json.dumps({"model": "tabular-mlp", "input-shape": [13], "num-classes": 2}))
    run.config.write_text(json.dumps({**DEFAULT_RUN_CONFIG, **HEART, "run-id": "hd", "resume-from": "x"}))
    run.privacy.write_text(json.dumps({"clients": {h: {"epsilon": 1.0} for h in HOSPITALS}}))
    run.artifacts.mkdir()
    write_artifact(run.artifacts, "fp32.onnx", mlp_onnx(model))
    write_artifact(run.artifacts, "int8.onnx", mlp_onnx(model, bias_shift=2.0), variant="int8", dtype="int8")
    return run


def _grid(tmp_path, data_dir, settings, *, silent=()):
    run_config = acceptance_run_config(settings)
    files = {h: data_dir / f"processed.{h}.data" for h in HOSPITALS}
    files["mismatched"] = narrow_table(data_dir / "processed.hungarian.data", tmp_path / "mismatched.data")
    contexts = {
        i + 1: node_context(path, name, run_config, node_id=i + 1) for i, (name, path) in enumerate(files.items())
    }

    def behaviour(node, message):
        if node in silent:
            return None
        reply = accept(message, contexts[node])
        return Error(reply.error.code, reply.error.reason) if reply.has_error() else reply.content

    return AnsweringGrid(list(contexts), behaviour)


def test_three_hospitals_are_the_sites_and_the_mismatched_node_is_listed_as_failed(tmp_path, data_dir):
    run = _run_dir(tmp_path)
    settings = AcceptanceSettings(run_dir=run.path, artifacts_dir=run.artifacts, max_site_drop=0.05, timeout=30)
    config = acceptance_run_config(settings)
    assert config["resume-from"] == "" and config["acceptance-artifacts"] == str(run.artifacts)
    report = run_acceptance(_grid(tmp_path, data_dir, settings), settings, flower_run_id=42)
    assert [s["name"] for s in report["sites"]] == list(HOSPITALS)
    assert report["mode"].startswith("on the federation's nodes") and "Flower run 42" in report["mode"]
    (failed,) = report["failed-sites"]
    assert failed["site"] == "mismatched" and "SchemaMismatchError" in failed["reason"]
    rows = {r["file"]: r for r in report["artifacts"]}
    assert rows["fp32.onnx"]["reference"] == "global-model" and rows["fp32.onnx"]["worst-site-drop"] == 0.0
    assert rows["int8.onnx"]["reference"] == "fp32.onnx"
    assert rows["fp32.onnx"]["verdict"] == "accepted" and rows["int8.onnx"]["verdict"] == "refused"
    digest = hashlib.sha256((run.artifacts / "acceptance.json").read_bytes()).hexdigest()
    lineage = json.loads((run.artifacts / "fp32.onnx.json").read_text())["lineage"]["acceptance"]
    assert lineage["sha256"] == digest and lineage["sites"] == 3
    assert "mismatched: AcceptanceOnNodeError: site mismatched" in (run.artifacts / "acceptance.md").read_text()


def test_too_few_sites_refuses_every_artifact_then_a_complete_acceptance_passes(tmp_path, data_dir):
    run = _run_dir(tmp_path)
    settings = AcceptanceSettings(run_dir=run.path, artifacts_dir=run.artifacts, max_site_drop=0.5, timeout=30)
    with pytest.raises(AcceptanceError, match=r"only 2 of the 3 sites.*node-3: no reply within 30s"):
        run_acceptance(_grid(tmp_path, data_dir, settings, silent={3}), settings, flower_run_id=1)
    report = json.loads((run.artifacts / "acceptance.json").read_text())
    assert {r["verdict"] for r in report["artifacts"]} == {"refused"} and report["incomplete"]
    # the silent node is named by its id (it never said who it is); every row keeps the sites that did report
    assert {f["site"] for f in report["failed-sites"]} == {"node-3", "mismatched"}
    assert [s["name"] for s in report["sites"]] == ["hungarian", "switzerland"]
    fp32 = load_artifact(run.artifacts / "fp32.onnx")
    with pytest.raises(AcceptanceGateError, match="fp32.onnx was not accepted: only 2 of the 3 sites"):
        check_acceptance([fp32], AcceptanceGate(max_site_drop=1.0))  # no threshold lets it out
    # every node answers: accepted again, by the report and by the gate
    run_acceptance(_grid(tmp_path, data_dir, settings), settings, flower_run_id=2)
    assert check_acceptance([load_artifact(run.artifacts / "fp32.onnx")], AcceptanceGate()) == []


def test_acceptance_refuses_an_artifact_changed_after_it_was_described(tmp_path, data_dir):
    run = _run_dir(tmp_path)
    settings = AcceptanceSettings(run_dir=run.path, artifacts_dir=run.artifacts, timeout=30)
    (run.artifacts / "int8.onnx").write_bytes(mlp_onnx(heart_model(), bias_shift=1.0))
    with pytest.raises(AcceptanceError, match="int8.onnx is not the file its description names"):
        run_acceptance(_grid(tmp_path, data_dir, settings), settings, flower_run_id=1)
    assert not (run.artifacts / "acceptance.json").exists()  # nothing was sent, nothing reported


def test_the_acceptance_app_dir_names_the_acceptance_server_app(tmp_path):
    text = (
        write_app_dir(tmp_path, {"dp": True}, server_app="edge.export.acceptance_app:app") / "pyproject.toml"
    ).read_text()
    assert 'serverapp = "edge.export.acceptance_app:app"' in text and 'clientapp = "client.client_app:app"' in text
