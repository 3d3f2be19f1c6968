"""Helpers for the acceptance tests on nodes (no fixtures): one heart-disease hospital's settings, a small MLP,
the same MLP as a real ONNX graph built from its weights, and the content the acceptance ServerApp sends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from shared_models.models import build_model
from shared_models.run_config import DEFAULT_RUN_CONFIG

# The hospitals' tables as heart-disease reads them: diagnosis binarized, two classes.
HEART = {
    "dataset": "csv",
    "partitioner": "natural",
    "csv-header": False,
    "csv-columns": "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num",
    "label-column": "num",
    "label-binarize-at": 1.0,
    "num-classes": 2,
    "model": "tabular-mlp",
    "dp": False,
}


def heart_model() -> torch.nn.Module:
    model = build_model("tabular-mlp", input_shape=(13,), num_classes=2, seed=0)
    with torch.no_grad():  # a model that is not all one answer, so the accuracies say something
        model.net[4].bias.copy_(torch.tensor([0.0, 0.3]))
    return model.eval()


def mlp_onnx(model: torch.nn.Module, bias_shift: float = 0.0) -> bytes:
    """The MLP as an ONNX graph (Gemm, Relu), built from its weights; ``bias_shift`` lowers class 1's score."""
    from onnx import TensorProto, helper, numpy_helper

    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    state["net.4.bias"][1] -= bias_shift
    nodes, inits, current = [], [], "x"
    for i, layer in enumerate((0, 2, 4)):
        w, b = f"net.{layer}.weight", f"net.{layer}.bias"
        inits += [numpy_helper.from_array(state[w], w), numpy_helper.from_array(state[b], b)]
        out = "logits" if layer == 4 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, w, b], [out], transB=1))
        if layer != 4:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 13])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    return onnx_model.SerializeToString()


def write_artifact(folder: Path, name: str, blob: bytes, *, variant: str = "fp32", dtype: str = "fp32") -> None:
    """An artifact and its description, as fedge package writes them (the fields acceptance reads)."""
    (folder / name).write_bytes(blob)
    description = {
        "schema": "fedge-artifact/1",
        "file": name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "format": "onnx",
        "variant": variant,
        "dtype": dtype,
    }
    (folder / f"{name}.json").write_text(json.dumps(description))


def acceptance_content(
    model: torch.nn.Module,
    files: dict[str, bytes],
    *,
    sha256: dict[str, bytes] | None = None,
    max_samples: int = 1000,
    seed: int = 0,
) -> RecordDict:
    """What the server sends: the global model, the files' bytes, and the sha256 of the bytes it means to send."""
    described = sha256 if sha256 is not None else files
    return RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "artifacts": ArrayRecord({n: Array(np.frombuffer(b, dtype=np.uint8)) for n, b in files.items()}),
            "acceptance": ConfigRecord(
                {
                    **{f"sha256.{n}": hashlib.sha256(b).hexdigest() for n, b in described.items()},
                    "max-samples": max_samples,
                    "seed": seed,
                    "num-classes": 2,
                }
            ),
        }
    )


def node_context(data_file: Path, name: str, run_config: dict | None = None, node_id: int = 7) -> Context:
    """A real node's context: its own file and name; the run config the server submitted."""
    run = run_config if run_config is not None else {**DEFAULT_RUN_CONFIG, **HEART}
    node_config = {"data-path": str(data_file), "node-name": name, "device": "cpu"}
    return Context(run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config=dict(run))


def narrow_table(source: Path, target: Path) -> Path:
    """``source`` with one feature column (thal) missing: a node whose table does not fit the federation's."""
    rows = [r for r in source.read_text().splitlines() if r]
    target.write_text("\n".join(",".join(r.split(",")[:12] + r.split(",")[13:]) for r in rows) + "\n")
    return target
