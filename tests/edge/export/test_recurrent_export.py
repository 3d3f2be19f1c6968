"""GRU and LSTM models (a user's sequence classifier) through export: each format either exports with parity and
runs on the agent's runtime, or is refused with the reason and what works instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge.agent.runtime import load_runner
from edge.compress.calibration import CalibrationSet
from edge.compress.quantize import quantize_onnx
from edge.export.errors import ExportError
from edge.export.onnx_export import export_onnx
from edge.export.runtime import open_artifact
from edge.export.tflite_export import export_tflite
from shared_models.data import ArrayDataset

pytest.importorskip("litert_torch")

SHAPE = (5, 3)  # (steps, features)


class SequenceNet(nn.Module):
    def __init__(self, kind: type[nn.Module]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = kind(input_size=3, hidden_size=8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1, :])


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(64, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def calibration(samples: np.ndarray) -> CalibrationSet:
    data = ArrayDataset("sequences", samples, np.zeros(len(samples), dtype=np.int64), 3)
    return CalibrationSet.from_dataset(data, input_shape=SHAPE, limit=64, seed=0)


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM])
def test_recurrent_model_exports_fp32_in_both_formats_with_parity(tmp_path: Path, kind, samples):
    model = SequenceNet(kind).eval()
    reference = model(torch.from_numpy(samples)).detach().numpy()
    onnx_path = export_onnx(model, tmp_path / "model.onnx", input_shape=SHAPE)
    export_tflite(model, tmp_path / "model.tflite", input_shape=SHAPE, precision="fp32")
    for path in (onnx_path, tmp_path / "model.tflite"):
        assert np.abs(open_artifact(path).run(samples) - reference).max() < 1e-4
        runner = load_runner(path.suffix[1:], path.read_bytes())
        assert np.abs(runner.predict(samples[0]) - reference[0]).max() < 1e-4  # one (steps, features) sample


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM])
def test_recurrent_model_int8_onnx_agrees_with_the_float_model(tmp_path: Path, kind, samples, calibration):
    model = SequenceNet(kind).eval()
    reference = model(torch.from_numpy(samples)).detach().numpy()
    float_path = export_onnx(model, tmp_path / "float.onnx", input_shape=SHAPE)
    quantize_onnx(float_path, tmp_path / "int8.onnx", mode="static", calibration=calibration)
    logits = open_artifact(tmp_path / "int8.onnx").run(samples)
    assert (logits.argmax(axis=1) == reference.argmax(axis=1)).mean() > 0.9


def test_int8_tflite_lstm_exports_and_gru_is_refused_with_the_reason(tmp_path: Path, samples, calibration):
    lstm = SequenceNet(nn.LSTM).eval()
    export_tflite(lstm, tmp_path / "lstm.tflite", input_shape=SHAPE, precision="int8", calibration=calibration)
    reference = lstm(torch.from_numpy(samples)).detach().numpy()
    logits = open_artifact(tmp_path / "lstm.tflite").run(samples)
    assert (logits.argmax(axis=1) == reference.argmax(axis=1)).mean() > 0.9
    with pytest.raises(ExportError, match=r"does not handle GRU \(layer 'rnn'\).*ONNX int8 \(-f onnx\)"):
        export_tflite(
            SequenceNet(nn.GRU).eval(),
            tmp_path / "gru.tflite",
            input_shape=SHAPE,
            precision="int8",
            calibration=calibration,
        )
