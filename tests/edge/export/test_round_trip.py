"""Round trips on a trained digits-cnn: each artifact, run by its real runtime (onnxruntime, ai-edge-litert), gives
the float PyTorch model's answers within the tolerance its precision allows.

Tolerances (logits of a model whose logits span about +-20):
- fp32 (ONNX, TFLite): max abs difference <= 1e-4, top-1 agreement 1.0;
- fp16 (TFLite, float16 weights): max abs difference <= 0.05;
- int8 (ONNX static QDQ, ONNX dynamic, TFLite full integer): mean abs difference <= 0.25, top-1 agreement >= 0.97,
  accuracy within 2 points of the float model's.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch

from edge.export import open_artifact, verify_artifact
from edge.export.artifact import describe_artifact, file_facts
from edge.export.narrow_conv import RowStackedConv2d, stack_rows_of_narrow_convs
from shared_models.models import build_model
from tests.edge.compress.trained_digits import INPUT_SHAPE, digits_split, trained_digits_cnn

FLOAT_EXACT = {"fp32.onnx", "fp32.tflite"}
INT8 = {"int8.onnx", "dynamic.onnx", "int8.tflite"}


@pytest.mark.parametrize(
    "name", ["fp32.onnx", "fp32.tflite", "fp16.tflite", "int8.onnx", "dynamic.onnx", "int8.tflite"]
)
def test_artifact_matches_the_float_model_within_its_tolerance(artifacts, name):
    model = trained_digits_cnn()
    test = digits_split()[1]
    check = verify_artifact(open_artifact(artifacts[name]), model, test)
    assert check.samples == len(test) == 359
    if name in FLOAT_EXACT:
        assert check.max_abs_diff <= 1e-4
        assert check.top1_agreement == 1.0
    elif name == "fp16.tflite":
        assert check.max_abs_diff <= 0.05
        assert check.top1_agreement >= 0.99
    else:
        assert name in INT8
        assert check.mean_abs_diff <= 0.25
        assert check.top1_agreement >= 0.97
        assert abs(check.accuracy - check.reference_accuracy) <= 0.02
    assert check.reference_accuracy > 0.9  # the model is trained: agreement means something


def test_onnx_has_a_dynamic_batch_and_passes_the_full_checker(artifacts):
    model = onnx.load(str(artifacts["fp32.onnx"]))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value"), "the batch dimension must be symbolic"
    assert [d.dim_value for d in dims[1:]] == list(INPUT_SHAPE)
    runner = open_artifact(artifacts["fp32.onnx"])
    x = digits_split()[1].x[:7]
    expected = trained_digits_cnn()(torch.from_numpy(x)).detach().numpy()
    for batch in (1, 7):
        out = runner.session.run(None, {"input": x[:batch]})[0]
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out, expected[:batch], atol=1e-4)


def test_static_int8_onnx_is_qdq_with_int8_weights(artifacts):
    model = onnx.load(str(artifacts["int8.onnx"]))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_weights) >= 3, "the convolution and linear weights must be stored as int8"
    io = open_artifact(artifacts["int8.onnx"]).io_details()
    assert io["input"]["dtype"] == "float32"
    assert io["input"]["qdq"] is not None and io["input"]["qdq"]["scale"][0] > 0


def test_tflite_int8_is_full_integer_with_int8_input_and_output(artifacts):
    runner = open_artifact(artifacts["int8.tflite"])
    io = runner.io_details()
    for side in ("input", "output"):
        assert io[side]["dtype"] == "int8"
        quant = io[side]["quantization"]
        assert quant is not None and quant["scale"][0] > 0 and -128 <= quant["zero-point"][0] <= 127
    assert io["input"]["shape"] == [1, *INPUT_SHAPE]
    # every convolution and fully connected layer runs on int8 activations and int8 weights (GroupNorm, which
    # TFLite has no integer kernel for, is the one part computed in float between DEQUANTIZE and QUANTIZE)
    tensors = {t["index"]: np.dtype(t["dtype"]).name for t in runner.interpreter.get_tensor_details()}
    heavy = [op for op in runner.interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert [op["op_name"] for op in heavy] == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    for op in heavy:
        assert [tensors[i] for i in op["inputs"][:2]] == ["int8", "int8"]
        assert [tensors[i] for i in op["outputs"]] == ["int8"]
    fp32 = open_artifact(artifacts["fp32.tflite"]).io_details()
    assert fp32["input"]["dtype"] == "float32" and fp32["input"]["quantization"] is None


@pytest.mark.parametrize("name", ["int8.tflite", "fp32.tflite"])
def test_verification_gives_exactly_what_the_device_agent_computes(artifacts, name):
    """fedge package verifies an artifact with the agent's own conversion of int8 inputs and outputs, so the
    numbers in its report are the device's, to the bit."""
    from edge.agent.runtime import load_runner

    path = artifacts[name]
    _, test = digits_split()
    x = test.x[:40]
    on_device = load_runner(path.suffix[1:], path.read_bytes())
    expected = np.stack([on_device.predict(sample) for sample in x])
    np.testing.assert_array_equal(open_artifact(path).run(x), expected)


def test_fp16_tflite_is_about_half_the_float_file(artifacts):
    assert artifacts["fp16.tflite"].stat().st_size < 0.9 * artifacts["fp32.tflite"].stat().st_size


def test_description_carries_what_a_manifest_needs(artifacts):
    path = artifacts["int8.tflite"]
    runner = open_artifact(path)
    description = describe_artifact(
        path,
        runner=runner,
        variant="int8",
        precision="int8",
        model="digits-cnn",
        parameters=1,
        nonzero_parameters=1,
        quantization={"mode": "int8"},
        compression=None,
        metrics={"accuracy": 0.9},
        source={},
    )
    assert description["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert description["size-bytes"] == path.stat().st_size
    assert description["format"] == "tflite" and description["dtype"] == "int8"
    assert description["input"]["dtype"] == "int8" and description["input"]["quantization"]["scale"]
    assert 0 < file_facts(path)["gzip-size-bytes"] < description["size-bytes"]


@pytest.mark.parametrize("stride, padding", [(1, 0), (1, 2), (2, 1)])
def test_the_row_stacked_rewrite_of_a_narrow_conv_computes_the_same_function(stride, padding):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 6, 5, stride=stride, padding=padding)
    x = torch.randn(3, 1, 13, 11)
    torch.testing.assert_close(RowStackedConv2d(conv)(x), conv(x), atol=1e-5, rtol=1e-5)


def test_the_rewrite_touches_only_narrow_convolutions_and_keeps_the_model_function():
    model = build_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
    rewritten, names = stack_rows_of_narrow_convs(model)
    assert names == ["features.0"]  # Conv2d(1, 32, 5); features.3 reads 32 channels
    assert isinstance(rewritten.features[0], RowStackedConv2d) and not isinstance(model.features[0], RowStackedConv2d)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(rewritten(x), model(x), atol=1e-5, rtol=1e-5)
