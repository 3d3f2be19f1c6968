"""Running a model on the device: onnxruntime for ``.onnx``, LiteRT (``ai-edge-litert``) for ``.tflite``.

Both runners take one sample (any shape with the model's number of values) and return a vector of class scores.
``tflite_runtime`` is accepted as a fallback import for devices that only have it. An int8 model's input is
quantized and its output dequantized by :func:`to_input_tensor` / :func:`from_output_tensor`, which
``edge.export`` also uses to verify artifacts, so a package is checked with the conversion its devices run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from edge.agent.errors import AgentConfigError, ModelRuntimeError


class ModelRunner(Protocol):
    input_shape: tuple[int, ...]

    def predict(self, sample: np.ndarray) -> np.ndarray: ...


def _fit(sample: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if sample.size != int(np.prod(shape)):
        raise ModelRuntimeError(f"a sample of {sample.size} values does not fit the model input {shape}")
    return np.ascontiguousarray(sample.reshape(shape), dtype=dtype)


def to_input_tensor(sample: np.ndarray, details: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """A float sample as the input tensor a LiteRT interpreter's ``details`` describe, in ``shape``: quantized with
    the tensor's scale and zero point (rounded, clipped to the integer type) where the tensor is an integer one,
    else only cast. The one conversion used by the device and by ``fedge package``'s verification."""
    dtype = details["dtype"]
    scale, zero = details.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        q = np.round(sample.astype(np.float32) / scale + zero)
        info = np.iinfo(dtype)
        return _fit(np.clip(q, info.min, info.max), shape, dtype)
    return _fit(sample, shape, dtype)


def from_output_tensor(out: np.ndarray, details: Mapping[str, Any]) -> np.ndarray:
    """A LiteRT output tensor as float32 scores: dequantized with the scale and zero point in ``details`` where it
    is an integer tensor, else only cast. Keeps the tensor's shape."""
    scale, zero = details.get("quantization", (0.0, 0))
    if np.issubdtype(out.dtype, np.integer) and scale:
        out = (out.astype(np.float32) - zero) * scale
    return np.asarray(out, dtype=np.float32)


class OnnxRunner:
    def __init__(self, model: bytes) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise AgentConfigError("the onnx runtime needs onnxruntime: pip install 'fedge[agent]'") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad models
            raise ModelRuntimeError(f"onnxruntime cannot load the model: {e}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in inp.shape)
        dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
        if inp.type not in dtypes:
            raise ModelRuntimeError(f"the model's input is {inp.type}; the agent feeds float samples")
        self.dtype = dtypes[inp.type]

    def predict(self, sample: np.ndarray) -> np.ndarray:
        x = _fit(sample, self.input_shape, self.dtype)
        try:
            out = self.session.run(None, {self.input_name: x})[0]
        except Exception as e:
            raise ModelRuntimeError(f"inference failed: {e}") from e
        return np.asarray(out, dtype=np.float32).reshape(-1)


def _tflite_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # fallback on devices that only have it

        return Interpreter
    except ImportError as e:
        raise AgentConfigError("the tflite runtime needs ai-edge-litert: pip install 'fedge[agent]'") from e


class TfliteRunner:
    def __init__(self, model: bytes) -> None:
        interpreter = _tflite_interpreter()
        try:
            self.interpreter = interpreter(model_content=model, num_threads=1)
            self.interpreter.allocate_tensors()
        except Exception as e:
            raise ModelRuntimeError(f"LiteRT cannot load the model: {e}") from e
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.inp["shape"])

    def predict(self, sample: np.ndarray) -> np.ndarray:
        x = to_input_tensor(sample, self.inp, self.input_shape)
        try:
            self.interpreter.set_tensor(self.inp["index"], x)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self.out["index"])
        except Exception as e:
            raise ModelRuntimeError(f"inference failed: {e}") from e
        return from_output_tensor(out, self.out).reshape(-1)


def load_runner(fmt: str, model: bytes) -> ModelRunner:
    """Load a model and run it once on zeros, so a model that loads but cannot run is refused before the swap."""
    runner: ModelRunner = OnnxRunner(model) if fmt == "onnx" else TfliteRunner(model)
    runner.predict(np.zeros(int(np.prod(runner.input_shape)), dtype=np.float32))
    return runner


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities from a model's output: kept as they are when they already are, else a softmax."""
    if scores.size and np.all(scores >= 0) and abs(float(scores.sum()) - 1.0) < 1e-3:
        return scores
    z = scores - np.max(scores)
    e = np.exp(z)
    return e / e.sum()
