"""Run an exported artifact the way a device does: onnxruntime for ``.onnx``, ``ai-edge-litert``'s Interpreter for
``.tflite``, one thread, one sample at a time, and time it.

The runners take float samples and return float logits whatever the artifact's own input/output types: an int8
TFLite model's input is quantized with its input tensor's scale and zero point, and its output dequantized, by the
device agent's own code (:func:`edge.agent.runtime.to_input_tensor`, :func:`~edge.agent.runtime.from_output_tensor`),
so what is verified here is what a device runs. Latency is timed around what a device does per sample (set the
input, invoke, read the output).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.agent.protocol import FORMATS, format_of
from edge.agent.runtime import from_output_tensor, to_input_tensor
from edge.compress.errors import MissingExtraError
from edge.export.errors import UnknownFormatError, VerificationError


class ArtifactRunner(Protocol):
    format: str
    path: Path

    def io_details(self) -> dict[str, dict[str, Any]]: ...

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def single_call(self, sample: np.ndarray) -> Callable[[], None]: ...


def _onnx_quant_params(path: Path) -> dict[str, dict[str, Any] | None]:
    """Scale and zero point of the QuantizeLinear reading the graph input and the DequantizeLinear writing the
    output, if the graph has them (a QDQ model keeps float input/output with these right behind them)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:  # constants may also come as Constant nodes
        if node.op_type == "Constant" and node.attribute:
            try:
                inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            except Exception:
                pass

    def params(node: Any) -> dict[str, Any] | None:
        scale = inits.get(node.input[1])
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None:
            return None
        return {
            "scale": np.asarray(scale).reshape(-1).astype(float).tolist(),
            "zero-point": [] if zero is None else np.asarray(zero).reshape(-1).astype(int).tolist(),
            "dtype": "int8" if zero is None or np.asarray(zero).dtype == np.int8 else str(np.asarray(zero).dtype),
        }

    graph_in = model.graph.input[0].name
    graph_out = model.graph.output[0].name
    found: dict[str, dict[str, Any] | None] = {"input": None, "output": None}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == graph_in:
            found["input"] = params(node)
        if node.op_type == "DequantizeLinear" and node.output[0] == graph_out:
            found["output"] = params(node)
    return found


class OnnxRunner:
    format = "onnx"

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise VerificationError(f"onnxruntime cannot load {self.path}: {e}") from e
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]

    def io_details(self) -> dict[str, dict[str, Any]]:
        quant = _onnx_quant_params(self.path)
        dtypes = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}

        def tensor(t: Any, which: str) -> dict[str, Any]:
            return {
                "name": t.name,
                "shape": [d if isinstance(d, int) else str(d) for d in t.shape],
                "dtype": dtypes.get(t.type, t.type),
                "quantization": None,  # the tensor itself is float
                "qdq": quant[which],  # the QuantizeLinear / DequantizeLinear right behind it, if any
            }

        return {"input": tensor(self.input, "input"), "output": tensor(self.output, "output")}

    def _check(self, x: np.ndarray) -> np.ndarray:
        want = list(self.input.shape[1:])
        fits = x.ndim == len(want) + 1 and all(
            not isinstance(w, int) or w == d for w, d in zip(want, x.shape[1:], strict=True)
        )
        if not fits:
            raise VerificationError(f"samples of shape {tuple(x.shape[1:])} do not fit {self.path.name}'s input {want}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        x = self._check(x)
        outs = [
            self.session.run([self.output.name], {self.input.name: x[i : i + batch_size]})[0]
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(outs).astype(np.float32)

    def single_call(self, sample: np.ndarray) -> Callable[[], None]:
        feed = {self.input.name: self._check(sample[None] if sample.ndim == len(self.input.shape) - 1 else sample)}
        names = [self.output.name]
        session = self.session
        return lambda: session.run(names, feed)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise MissingExtraError("running .tflite files needs ai-edge-litert: pip install 'fedge[tflite]'") from e
    return Interpreter


class TFLiteRunner:
    format = "tflite"

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        interpreter = _interpreter_class()
        self.path = Path(path)
        try:
            self.interpreter = interpreter(model_path=str(self.path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as e:
            raise VerificationError(f"the LiteRT Interpreter cannot load {self.path}: {e}") from e
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.input["shape"])

    @staticmethod
    def _tensor(details: dict[str, Any]) -> dict[str, Any]:
        params = details.get("quantization_parameters") or {}
        scales = np.asarray(params.get("scales", []), dtype=float)
        zeros = np.asarray(params.get("zero_points", []), dtype=int)
        quant = None
        if scales.size:
            quant = {"scale": scales.tolist(), "zero-point": zeros.tolist(), "dtype": np.dtype(details["dtype"]).name}
        return {
            "name": details["name"],
            "shape": [int(d) for d in details["shape"]],
            "dtype": np.dtype(details["dtype"]).name,
            "quantization": quant,
        }

    def io_details(self) -> dict[str, dict[str, Any]]:
        return {"input": self._tensor(self.input), "output": self._tensor(self.output)}

    def _to_input(self, sample: np.ndarray) -> np.ndarray:
        if sample.size != int(np.prod(self.input_shape)):
            raise VerificationError(
                f"a sample of shape {tuple(sample.shape)} does not fit {self.path.name}'s input {self.input_shape}"
            )
        return to_input_tensor(sample, self.input, self.input_shape)

    def _from_output(self, out: np.ndarray) -> np.ndarray:
        return from_output_tensor(out, self.output)

    def run(self, x: np.ndarray) -> np.ndarray:
        interp, inp, out = self.interpreter, self.input["index"], self.output["index"]
        results = []
        for sample in x:
            interp.set_tensor(inp, self._to_input(sample))
            interp.invoke()
            results.append(self._from_output(interp.get_tensor(out)).reshape(-1))
        return np.stack(results)

    def single_call(self, sample: np.ndarray) -> Callable[[], None]:
        prepared = self._to_input(sample)
        interp, inp, out = self.interpreter, self.input["index"], self.output["index"]

        def call() -> None:
            interp.set_tensor(inp, prepared)
            interp.invoke()
            interp.get_tensor(out)

        return call


#: the runner of each format of :data:`edge.agent.protocol.FORMATS`
_RUNNERS: dict[str, Callable[..., ArtifactRunner]] = {"onnx": OnnxRunner, "tflite": TFLiteRunner}


def open_artifact(path: str | Path, *, threads: int = 1) -> ArtifactRunner:
    """The runner for the artifact at ``path``, by its suffix (:data:`edge.agent.protocol.FORMATS`)."""
    path = Path(path)
    if not path.is_file():
        raise VerificationError(f"artifact {path} does not exist")
    runner = _RUNNERS.get(format_of(path) or "")
    if runner is None:
        raise UnknownFormatError(
            f"unknown artifact format {path.suffix!r} ({path}); fedge runs {' and '.join(FORMATS.values())}"
        )
    return runner(path, threads=threads)


def measure_latency(
    calls: Mapping[str, Callable[[], None]], *, runs: int = 200, rounds: int = 5, warmup: int = 20
) -> dict[str, float]:
    """Median seconds per call of each entry, over ``runs`` timed calls each.

    The calls are timed in ``rounds`` interleaved blocks (each round runs every entry in turn, the order rotating),
    so a machine that slows down for a while slows all of them alike; the ratios stay meaningful.
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    per_round = max(1, runs // max(1, rounds))
    times: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for name in order:
            call = calls[name]
            bucket = times[name]
            for _ in range(per_round):
                start = clock()
                call()
                bucket.append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items() if values}
