"""Artifacts of one trained digits-cnn, built once per session and shared by the export tests (each TFLite
conversion takes seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.compress.calibration import CalibrationSet
from edge.compress.quantize import quantize_onnx
from edge.export import export_onnx, export_tflite
from tests.edge.compress.trained_digits import INPUT_SHAPE, digits_split, trained_digits_cnn

#: (file name, how it is built) for the round-trip tests.
ARTIFACTS = ("fp32.onnx", "int8.onnx", "dynamic.onnx", "fp32.tflite", "fp16.tflite", "int8.tflite")


@pytest.fixture(scope="session")
def calibration() -> CalibrationSet:
    return CalibrationSet.from_dataset(digits_split()[0], input_shape=INPUT_SHAPE, limit=128, seed=0)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, calibration: CalibrationSet) -> dict[str, Path]:
    """Every artifact of the trained digits-cnn, by file name."""
    out = tmp_path_factory.mktemp("digits-artifacts")
    model = trained_digits_cnn()
    paths: dict[str, Path] = {}
    paths["fp32.onnx"] = export_onnx(model, out / "fp32.onnx", input_shape=INPUT_SHAPE)
    for mode, name in (("static", "int8.onnx"), ("dynamic", "dynamic.onnx")):
        quantize_onnx(paths["fp32.onnx"], out / name, mode=mode, calibration=calibration)
        paths[name] = out / name
    for precision in ("fp32", "fp16", "int8"):
        name = f"{precision}.tflite"
        export_tflite(model, out / name, input_shape=INPUT_SHAPE, precision=precision, calibration=calibration)
        paths[name] = out / name
    return paths
