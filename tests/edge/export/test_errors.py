"""Bad input gives a clear error that says what was wrong: a missing or damaged checkpoint, an unknown format,
an empty or wrongly shaped calibration set, a sparsity outside [0, 1), a layer the target format cannot express."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edge.compress import CalibrationError, CalibrationSet, SparsityError
from edge.compress.quantize import quantize_onnx
from edge.export import (
    CheckpointError,
    UnknownFormatError,
    UnsupportedLayerError,
    VerificationError,
    export_onnx,
    export_tflite,
    open_artifact,
)
from edge.export.onnx_export import check_onnx
from edge.export.package import PackageOptions, parse_variant
from edge.export.run_source import load_run_model
from shared_models.errors import FedgeError
from tests.edge.compress.trained_digits import INPUT_SHAPE, digits_split, trained_digits_cnn


class SingularValues(nn.Module):
    """A layer with an op (SVD) that neither ONNX nor TFLite can express."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(self.fc(x.flatten(1)).reshape(-1, 2, 4)).S


class WithAnUnsupportedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 1, 1)
        self.spectrum = SingularValues()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectrum(self.stem(x))


def test_onnx_export_of_an_unsupported_layer_names_the_layer(tmp_path):
    with pytest.raises(
        UnsupportedLayerError, match=r"layer 'spectrum' \(SingularValues\) uses the op aten\._linalg_svd"
    ):
        export_onnx(WithAnUnsupportedLayer(), tmp_path / "m.onnx", input_shape=INPUT_SHAPE)
    assert not (tmp_path / "m.onnx").exists()


def test_tflite_export_of_an_unsupported_layer_names_the_layer(tmp_path):
    with pytest.raises(
        UnsupportedLayerError, match=r"layer 'spectrum' \(SingularValues\) uses the op aten\._linalg_svd"
    ):
        export_tflite(WithAnUnsupportedLayer(), tmp_path / "m.tflite", input_shape=INPUT_SHAPE)
    assert not (tmp_path / "m.tflite").exists()


def _run_dir(tmp_path, *, weights: bool = True):
    run = tmp_path / "run"
    run.mkdir()
    model = trained_digits_cnn()
    (run / "model.json").write_text(
        json.dumps({"model": "digits-cnn", "input-shape": list(INPUT_SHAPE), "num-classes": 10})
    )
    if weights:
        torch.save(model.state_dict(), run / "model.pt")
    return run


def test_rejects_a_missing_run_directory_or_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run_model(tmp_path / "nonesuch")
    with pytest.raises(CheckpointError, match="no model.json"):
        load_run_model(tmp_path)
    with pytest.raises(CheckpointError, match="no model.pt"):
        load_run_model(_run_dir(tmp_path, weights=False))


def test_rejects_a_damaged_or_mismatched_checkpoint(tmp_path):
    run = _run_dir(tmp_path)
    model, info, _ = load_run_model(run)
    assert info["model"] == "digits-cnn" and sum(p.numel() for p in model.parameters()) > 0
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_run_model(run)
    wrong = build_wrong_weights()
    torch.save(wrong, run / "model.pt")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_run_model(run)


def build_wrong_weights() -> dict[str, torch.Tensor]:
    return {"features.0.weight": torch.zeros(3, 3)}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"formats": ("coreml",)}, UnknownFormatError, "unknown format 'coreml'"),
        ({"formats": ()}, UnknownFormatError, "no format"),
        ({"variants": ("int4",)}, UnknownFormatError, "unknown variant 'int4'"),
        ({"variants": ("sparse-int8",)}, UnknownFormatError, "unknown variant"),
        ({"sparsity": 1.0}, SparsityError, r"\[0, 1\)"),
        ({"sparsity": -0.2}, SparsityError, r"\[0, 1\)"),
        ({"channel_amount": 1.5}, SparsityError, r"\[0, 1\)"),
    ],
)
def test_rejects_unknown_formats_variants_and_sparsities(kwargs, error, message):
    with pytest.raises(error, match=message):
        PackageOptions(**kwargs)


def test_variant_names_parse():
    assert parse_variant("int8").kind == "base"
    assert (parse_variant("pruned").kind, parse_variant("pruned").precision) == ("pruned", "fp32")
    assert parse_variant("Student-INT8").name == "student-int8"


def test_rejects_an_unknown_tflite_precision_and_artifact_suffix(tmp_path):
    with pytest.raises(UnknownFormatError, match="unknown TFLite precision 'int4'"):
        export_tflite(trained_digits_cnn(), tmp_path / "m.tflite", input_shape=INPUT_SHAPE, precision="int4")
    (tmp_path / "m.pb").write_bytes(b"x")
    with pytest.raises(UnknownFormatError, match="unknown artifact format '.pb'"):
        open_artifact(tmp_path / "m.pb")
    with pytest.raises(VerificationError, match="does not exist"):
        open_artifact(tmp_path / "none.onnx")


def test_rejects_int8_without_calibration_or_with_the_wrong_shape(artifacts, tmp_path):
    with pytest.raises(CalibrationError, match="needs calibration samples"):
        quantize_onnx(artifacts["fp32.onnx"], tmp_path / "q.onnx", mode="static", calibration=None)
    wrong = CalibrationSet.from_array(np.zeros((4, 1, 28, 28), np.float32), input_shape=(1, 28, 28))
    with pytest.raises(CalibrationError, match=r"shape \(1, 28, 28\) but the ONNX model fp32.onnx takes \(1, 8, 8\)"):
        quantize_onnx(artifacts["fp32.onnx"], tmp_path / "q.onnx", mode="static", calibration=wrong)
    with pytest.raises(CalibrationError, match=r"shape \(1, 28, 28\) but the model takes \(1, 8, 8\)"):
        export_tflite(
            trained_digits_cnn(), tmp_path / "q.tflite", input_shape=INPUT_SHAPE, precision="int8", calibration=wrong
        )
    with pytest.raises(CalibrationError, match="needs calibration samples"):
        export_tflite(trained_digits_cnn(), tmp_path / "q.tflite", input_shape=INPUT_SHAPE, precision="int8")
    with pytest.raises(CalibrationError, match="is empty"):
        CalibrationSet.from_array(np.zeros((0, *INPUT_SHAPE), np.float32), input_shape=INPUT_SHAPE)
    with pytest.raises(FedgeError, match="unknown ONNX quantization mode"):
        quantize_onnx(artifacts["fp32.onnx"], tmp_path / "q.onnx", mode="int4")


def test_rejects_test_samples_that_do_not_fit_the_artifact(artifacts):
    for name in ("fp32.onnx", "int8.tflite"):
        with pytest.raises(VerificationError, match="do(es)? not fit"):
            open_artifact(artifacts[name]).run(np.zeros((2, 1, 28, 28), np.float32))
    assert open_artifact(artifacts["fp32.onnx"]).run(digits_split()[1].x[:3]).shape == (3, 10)


def test_a_damaged_onnx_file_fails_the_checker_and_the_runtime(artifacts, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(artifacts["fp32.onnx"].read_bytes()[:200])
    with pytest.raises(FedgeError, match="fails onnx.checker"):
        check_onnx(bad)
    with pytest.raises(VerificationError, match="onnxruntime cannot load"):
        open_artifact(bad)
