"""The acceptance test of the exact artifact bytes and the gate of fedge publish, on two synthetic sites (the digits
0-4 and 5-9): an artifact degraded on purpose for one site (two of that site's classes swapped) is refused there
and by the gate, while the good one passes; a file changed after the test is refused as untested."""

from __future__ import annotations

import hashlib
import json

import pytest

from edge.delivery.acceptance_gate import AcceptanceGate, AcceptanceGateError, check_acceptance
from edge.delivery.publisher import load_artifact
from edge.export.acceptance import Site, accept_artifacts
from tests.edge.helpers import digits_split, logistic_weights


def _onnx(swap: tuple[int, int] | None = None) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    w, b = (a.copy() for a in logistic_weights())
    if swap:  # the model calls one class the other: only the site that has those classes sees it
        i, j = swap
        w[:, [i, j]], b[[i, j]] = w[:, [j, i]], b[[j, i]]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["logits"])],
        "logreg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _artifact(folder, name: str, data: bytes, variant: str, dtype: str) -> None:
    (folder / name).write_bytes(data)
    description = {
        "schema": "fedge-artifact/1",
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "onnx",
        "variant": variant,
        "dtype": dtype,
        "model": "digits-logreg",
        "source": {"run-id": "r1", "lineage": {"run-id": "r1", "privacy": {"epsilon-max": 3.0}}},
    }
    (folder / f"{name}.json").write_text(json.dumps(description))


@pytest.fixture
def accepted(tmp_path):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    _artifact(folder, "fp32.onnx", _onnx(), "fp32", "fp32")
    _artifact(folder, "int8.onnx", _onnx(), "int8", "int8")
    _artifact(folder, "pruned-int8.onnx", _onnx(swap=(5, 6)), "pruned-int8", "int8")
    _, _, x, y = digits_split()
    sites = [Site("site-low", x[y < 5], y[y < 5]), Site("site-high", x[y >= 5], y[y >= 5])]
    report = accept_artifacts(folder, sites, max_site_drop=0.05, run_id="r1")
    return folder, report


def test_an_artifact_degraded_for_one_site_fails_the_acceptance_and_the_good_one_passes(accepted):
    folder, report = accepted
    rows = {r["file"]: r for r in report["artifacts"]}
    assert rows["int8.onnx"]["verdict"] == "accepted" and rows["int8.onnx"]["worst-site-drop"] == 0.0
    bad = rows["pruned-int8.onnx"]
    assert bad["verdict"] == "refused" and bad["worst-site"] == "site-high"
    assert bad["sites"]["site-low"]["drop"] == 0.0 and bad["sites"]["site-high"]["drop"] > 0.1
    assert bad["reference"] == "fp32.onnx"
    table = (folder / "acceptance.md").read_text()
    assert "| pruned-int8.onnx |" in table and "refused" in table
    # each description records the report's hash and its verdict, next to the run's lineage
    description = json.loads((folder / "pruned-int8.onnx.json").read_text())
    digest = hashlib.sha256((folder / "acceptance.json").read_bytes()).hexdigest()
    assert description["lineage"]["acceptance"]["sha256"] == digest
    assert description["lineage"]["acceptance"]["verdict"] == "refused"
    assert description["lineage"]["privacy"]["epsilon-max"] == 3.0
    assert description["lineage"]["recipe"]["variant"] == "pruned-int8"


def test_the_gate_refuses_the_degraded_artifact_and_passes_the_good_one(accepted):
    folder, _ = accepted
    good, bad = load_artifact(folder / "int8.onnx"), load_artifact(folder / "pruned-int8.onnx")
    assert check_acceptance([good], AcceptanceGate()) == []
    assert good.lineage["acceptance"]["verdict"] == "accepted"  # what the signed manifest will carry
    # the message names what the artifact was compared with: here the fp32 artifact of its format
    with pytest.raises(AcceptanceGateError, match="site-high against fp32.onnx there.*--accept-site-drop"):
        check_acceptance([good, bad], AcceptanceGate(max_site_drop=0.05))
    # a looser threshold at publish time lets it out; the override is recorded
    assert check_acceptance([bad], AcceptanceGate(max_site_drop=0.9)) == []
    overrides = check_acceptance([bad], AcceptanceGate(override=True))
    assert len(overrides) == 1 and overrides[0].startswith("accept-site-drop:") and "site-high" in overrides[0]


def test_the_gate_names_the_global_model_as_the_reference_of_an_fp32_artifact(tmp_path):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    _artifact(folder, "fp32.onnx", _onnx(swap=(5, 6)), "fp32", "fp32")  # exported wrong: worse than its source
    w, b = logistic_weights()
    _, _, x, y = digits_split()
    sites = [Site("site-low", x[y < 5], y[y < 5]), Site("site-high", x[y >= 5], y[y >= 5])]
    report = accept_artifacts(folder, sites, global_model=lambda sample: sample @ w + b)
    assert report["artifacts"][0]["reference"] == "global-model"
    with pytest.raises(AcceptanceGateError, match="site-high against the global model there") as refused:
        check_acceptance([load_artifact(folder / "fp32.onnx")], AcceptanceGate())
    assert "fp32 there" not in str(refused.value)


def test_the_gate_refuses_an_untested_or_changed_artifact(accepted, tmp_path):
    folder, _ = accepted
    # changed after the test (its description updated to match, so only the acceptance report catches it)
    data = _onnx(swap=(0, 1))
    (folder / "int8.onnx").write_bytes(data)
    description = json.loads((folder / "int8.onnx.json").read_text())
    description["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "int8.onnx.json").write_text(json.dumps(description))
    with pytest.raises(AcceptanceGateError, match="not the file its acceptance report tested"):
        check_acceptance([load_artifact(folder / "int8.onnx")], AcceptanceGate())
    # never tested: refused with how to test it
    other = tmp_path / "other"
    other.mkdir()
    _artifact(other, "int8.onnx", _onnx(), "int8", "int8")
    with pytest.raises(AcceptanceGateError, match="no acceptance report.*fedge accept"):
        check_acceptance([load_artifact(other / "int8.onnx")], AcceptanceGate())


def test_acceptance_refuses_bytes_that_are_not_the_described_ones(accepted):
    folder, _ = accepted
    (folder / "int8.onnx").write_bytes(_onnx(swap=(1, 2)))
    from edge.export.acceptance import AcceptanceError

    _, _, x, y = digits_split()
    with pytest.raises(AcceptanceError, match="sha256 differs"):
        accept_artifacts(folder, [Site("s", x[:10], y[:10])])
