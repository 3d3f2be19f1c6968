"""Running a model on the device: onnxruntime for ``.onnx``, LiteRT (``ai-edge-litert``) for ``.tflite``.

Both runners take one sample (any shape with the model's number of values) and return a vector of class scores.
``tflite_runtime`` is accepted as a fallback import for devices that only have it. An int8 model's input is
quantized and its output dequantized by :func:`to_input_tensor` / :func:`from_output_tensor`, which
``edge.export`` also uses to verify artifacts, so a package is checked with the conversion its devices run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge.agent.errors import AgentConfigError, ModelRuntimeError


class ModelRunner(Protocol):
    input_shape: tuple[int, ...]

    def predict(self, sample: np.ndarray) -> np.ndarray: ...


#: What a device may be told to do to a sample before inference (the artifact's ``device-preprocessing``).
PREPROCESSING_KEYS = ("scale", "offset", "standardize", "transpose", "layout")
LAYOUTS = ("NCHW", "NHWC", "NC", "NCT", "NTC", "NCL", "NLC")


@dataclass(frozen=True)
class Preprocessing:
    """The declarative preprocessing an artifact's description declares, applied with numpy only, in this order:
    ``transpose`` (axes of one sample), ``scale`` and ``offset`` (``x * scale + offset``), ``standardize``
    (``(x - mean) / std``, per feature on the last axis, or per channel on the first when their count matches);
    ``layout`` only documents the model's input layout.

    >>> Preprocessing.from_spec({"scale": 0.5, "standardize": {"mean": [1.0], "std": [2.0]}}).apply(np.array([[4.0]]))
    array([[0.5]], dtype=float32)
    """

    transpose: tuple[int, ...] | None = None
    scale: float | None = None
    offset: float | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    layout: str = ""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Preprocessing:
        """Check a spec (unknown keys, non-numbers, a zero std are refused with :class:`AgentConfigError`)."""
        spec = dict(spec or {})
        unknown = sorted(set(spec) - set(PREPROCESSING_KEYS))
        if unknown:
            raise AgentConfigError(
                f"unknown preprocessing step {unknown[0]!r}; a device knows: {', '.join(PREPROCESSING_KEYS)}"
            )
        mean = std = None
        if "standardize" in spec:
            table = spec["standardize"]
            if not isinstance(table, Mapping) or set(table) != {"mean", "std"}:
                raise AgentConfigError('standardize must be {"mean": [...], "std": [...]}')
            mean, std = _numbers(table["mean"], "standardize.mean"), _numbers(table["std"], "standardize.std")
            if mean.shape != std.shape or not (std > 0).all():
                raise AgentConfigError("standardize needs as many means as standard deviations, every std > 0")
        layout = str(spec.get("layout", ""))
        if layout and layout not in LAYOUTS:
            raise AgentConfigError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
        transpose = spec.get("transpose")
        if transpose is not None and (
            not isinstance(transpose, Sequence) or sorted(int(a) for a in transpose) != list(range(len(transpose)))
        ):
            raise AgentConfigError(f"transpose must be a permutation of a sample's axes, got {transpose!r}")
        return cls(
            transpose=tuple(int(a) for a in transpose) if transpose is not None else None,
            scale=float(_numbers(spec["scale"], "scale")) if "scale" in spec else None,
            offset=float(_numbers(spec["offset"], "offset")) if "offset" in spec else None,
            mean=mean,
            std=std,
            layout=layout,
        )

    @property
    def empty(self) -> bool:
        return self.transpose is None and self.scale is None and self.offset is None and self.mean is None

    def apply(self, sample: np.ndarray) -> np.ndarray:
        x = np.asarray(sample, dtype=np.float32)
        if self.transpose is not None:
            if x.ndim != len(self.transpose):
                raise ModelRuntimeError(f"transpose {self.transpose} does not fit a sample of shape {x.shape}")
            x = np.transpose(x, self.transpose)
        if self.scale is not None:
            x = x * np.float32(self.scale)
        if self.offset is not None:
            x = x + np.float32(self.offset)
        if self.mean is not None and self.std is not None:
            mean, std = self.mean, self.std
            if x.ndim >= 1 and x.shape[-1] == mean.size:
                pass
            elif x.ndim >= 2 and x.shape[0] == mean.size:
                mean = mean.reshape((-1,) + (1,) * (x.ndim - 1))
                std = std.reshape((-1,) + (1,) * (x.ndim - 1))
            elif mean.size != 1:
                raise ModelRuntimeError(f"{mean.size} means do not fit a sample of shape {x.shape}")
            x = (x - mean) / std
        return np.asarray(x, dtype=np.float32)


def _numbers(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise AgentConfigError(f"preprocessing {what} must be numbers, got {value!r}") from None
    if not np.isfinite(array).all():
        raise AgentConfigError(f"preprocessing {what} must be finite numbers")
    return array.astype(np.float32)


def _fit(sample: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, dynamic: tuple[bool, ...] = ()) -> np.ndarray:
    """One sample as the model's input tensor: a batch axis added, the values cast to the input's dtype. With
    dynamic axes (a sequence of any length), a sample whose fixed axes match keeps its own length."""
    sample = np.asarray(sample)
    if tuple(sample.shape) == tuple(shape[1:]) or tuple(sample.shape) == tuple(shape):
        return np.ascontiguousarray(sample.reshape(shape), dtype=dtype)
    if any(dynamic[1:]) and sample.ndim == len(shape) - 1:
        fixed = all(dyn or d == s for d, s, dyn in zip(shape[1:], sample.shape, dynamic[1:], strict=True))
        if fixed:
            return np.ascontiguousarray(sample[None, ...], dtype=dtype)
    if sample.size != int(np.prod(shape)):
        raise ModelRuntimeError(
            f"a sample of shape {tuple(sample.shape)} ({sample.size} values) does not fit the model input {shape}"
        )
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


ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


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
        self.dynamic = tuple(not (isinstance(d, int) and d > 0) for d in inp.shape)
        if inp.type not in ONNX_DTYPES:
            raise ModelRuntimeError(
                f"the model's input is {inp.type}; the agent feeds {', '.join(sorted(ONNX_DTYPES))} samples"
            )
        self.dtype = ONNX_DTYPES[inp.type]

    def predict(self, sample: np.ndarray) -> np.ndarray:
        x = _fit(sample, self.input_shape, self.dtype, self.dynamic)
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


class PreprocessedRunner:
    """A runner that applies the artifact's declared preprocessing to every sample first."""

    def __init__(self, runner: ModelRunner, preprocessing: Preprocessing) -> None:
        self.runner = runner
        self.preprocessing = preprocessing
        self.input_shape = runner.input_shape

    def predict(self, sample: np.ndarray) -> np.ndarray:
        return self.runner.predict(self.preprocessing.apply(sample))


def load_runner(fmt: str, model: bytes, preprocessing: Mapping[str, Any] | None = None) -> ModelRunner:
    """Load a model and run it once on zeros, so a model that loads but cannot run is refused before the swap;
    with ``preprocessing`` (an artifact's ``device-preprocessing``), every sample is preprocessed first."""
    runner: ModelRunner = OnnxRunner(model) if fmt == "onnx" else TfliteRunner(model)
    runner.predict(np.zeros(runner.input_shape, dtype=np.float32))
    steps = Preprocessing.from_spec(preprocessing)
    return runner if steps.empty else PreprocessedRunner(runner, steps)


def accuracy_of(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """The fraction of samples whose highest score is their label, one sample at a time as a device runs them: what
    ``fedge accept`` measures for every artifact and for the global model, in-process and on a federation's nodes.

    >>> accuracy_of(lambda sample: sample, np.eye(3, dtype=np.float32), np.array([0, 1, 1]))
    0.6666666666666666
    """
    correct = sum(int(np.argmax(predict(sample)) == int(label)) for sample, label in zip(x, y, strict=True))
    return correct / len(y) if len(y) else 0.0


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities from a model's output: kept as they are when they already are, else a softmax."""
    if scores.size and np.all(scores >= 0) and abs(float(scores.sum()) - 1.0) < 1e-3:
        return scores
    z = scores - np.max(scores)
    e = np.exp(z)
    return e / e.sum()
