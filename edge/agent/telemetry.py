"""What the agent measures between two telemetry messages, and the buffer that holds them while offline."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from edge.agent.errors import AgentConfigError


class TelemetryWindow:
    """Inference statistics over one report window: counts, latency p50/p95, errors, mean confidence, a
    histogram of the predicted classes and, where the samples have labels, accuracy."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.latencies_ms: list[float] = []
        self.confidences: list[float] = []
        self.predictions: list[int] = []
        self.errors = 0
        self.labelled = 0
        self.correct = 0

    def record(self, latency_ms: float, probs: np.ndarray, label: int | None) -> None:
        predicted = int(np.argmax(probs))
        self.latencies_ms.append(latency_ms)
        self.confidences.append(float(probs[predicted]))
        self.predictions.append(predicted)
        if label is not None:
            self.labelled += 1
            self.correct += int(predicted == label)

    def record_error(self) -> None:
        self.errors += 1

    def snapshot(self, now: float) -> dict[str, Any]:
        """The window's fields of a :class:`edge.agent.protocol.Telemetry` message, by name."""
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        histogram = tuple(np.bincount(self.predictions).tolist()) if self.predictions else ()
        return {
            "window_s": round(now - self.started, 3),
            "inferences": len(self.latencies_ms),
            "errors": self.errors,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 4) if lat.size else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 4) if lat.size else None,
            "mean_confidence": round(float(np.mean(self.confidences)), 5) if self.confidences else None,
            "histogram": histogram,
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": round(self.correct / self.labelled, 5) if self.labelled else None,
        }


class TelemetryBuffer:
    """Messages (topic, payload) waiting for the broker: bounded, oldest dropped first, drops counted (and
    reported in the next telemetry)."""

    def __init__(self, max_messages: int) -> None:
        self.messages: deque[tuple[str, bytes]] = deque()
        self.max_messages = max_messages
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.messages)

    def push(self, item: tuple[str, bytes]) -> None:
        if len(self.messages) >= self.max_messages:
            self.messages.popleft()
            self.dropped += 1
        self.messages.append(item)

    def pop(self) -> tuple[str, bytes]:
        return self.messages.popleft()


class SampleSource:
    """The samples the device runs inference on: an ``.npz`` file with ``x`` (N samples, any shape) and,
    optionally, ``y`` (N integer labels), or an ``.npy`` file of samples. Read in a loop, one sample at a time."""

    def __init__(self, path: Path) -> None:
        try:
            if path.suffix == ".npy":
                x, y = np.load(path, allow_pickle=False), None
            else:
                with np.load(path, allow_pickle=False) as f:
                    x = f["x"]
                    y = f["y"] if "y" in f.files else None
        except (OSError, ValueError, KeyError) as e:
            raise AgentConfigError(f"cannot read samples from {path}: {e} (an .npz with 'x' and optional 'y')") from e
        if x.ndim < 1 or len(x) == 0:
            raise AgentConfigError(f"{path} holds no samples")
        if y is not None and len(y) != len(x):
            raise AgentConfigError(f"{path}: {len(x)} samples but {len(y)} labels")
        self.x = x.astype(np.float32, copy=False)
        self.y = None if y is None else y.astype(np.int64)
        self.position = 0

    def __len__(self) -> int:
        return len(self.x)

    def next(self) -> tuple[np.ndarray, int | None]:
        i = self.position
        self.position = (i + 1) % len(self.x)
        return self.x[i], None if self.y is None else int(self.y[i])
