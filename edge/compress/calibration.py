"""Calibration data for static quantization: real samples of the model's input, checked before any quantizer runs.

A quantizer calibrated on the wrong data quantizes silently and badly, so a set that is empty, of the wrong
shape or not finite is refused here with a message that says what was expected.

>>> import numpy as np
>>> calib = CalibrationSet.from_array(np.zeros((4, 1, 8, 8), dtype=np.float32), input_shape=(1, 8, 8))
>>> len(calib), calib.input_shape
(4, (1, 8, 8))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.compress.errors import CalibrationError
from shared_models.data import ArrayDataset


@dataclass(frozen=True)
class CalibrationSet:
    """Samples ``x`` (float32, shape ``(N, *input_shape)``), N >= 1, all finite."""

    x: np.ndarray
    source: str = "array"

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @classmethod
    def from_array(
        cls,
        x: np.ndarray,
        *,
        input_shape: Sequence[int],
        source: str = "array",
        limit: int | None = None,
        seed: int = 0,
    ) -> CalibrationSet:
        """Check ``x`` against the model's ``input_shape`` (no batch dimension); keep at most ``limit`` samples."""
        expected = tuple(int(d) for d in input_shape)
        x = np.asarray(x)
        if x.ndim == len(expected) and tuple(x.shape) == expected:
            x = x[None]  # one sample without its batch dimension
        if x.size == 0 or len(x) == 0:
            raise CalibrationError(
                f"the calibration set from {source} is empty; static quantization needs real input samples "
                f"(a few hundred of shape {expected}): pass the server's held-out split or a file with samples"
            )
        if tuple(x.shape[1:]) != expected:
            raise CalibrationError(
                f"the calibration samples from {source} have shape {tuple(x.shape[1:])} but the model takes "
                f"{expected}; calibrate with samples of the data set the model was trained on"
            )
        if not np.issubdtype(x.dtype, np.number):
            raise CalibrationError(f"the calibration samples from {source} are {x.dtype}, not numbers")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise CalibrationError(f"the calibration samples from {source} hold NaN or infinite values")
        if limit is not None and limit < len(x):
            if limit < 1:
                raise CalibrationError(f"a calibration set of {limit} samples is empty; ask for at least 1")
            idx = np.sort(np.random.default_rng(seed).choice(len(x), size=limit, replace=False))
            x = x[idx]
        return cls(np.ascontiguousarray(x), source)

    @classmethod
    def from_dataset(
        cls, data: ArrayDataset, *, input_shape: Sequence[int], limit: int | None = 256, seed: int = 0
    ) -> CalibrationSet:
        """Samples of a data set (the server's held-out split, say); labels are not needed."""
        return cls.from_array(data.x, input_shape=input_shape, source=f"data set {data.name!r}", limit=limit, seed=seed)

    @classmethod
    def from_file(
        cls, path: str | Path, *, input_shape: Sequence[int], limit: int | None = 256, seed: int = 0
    ) -> CalibrationSet:
        """Samples from a ``.npy`` file (the array itself) or a ``.npz`` file (its ``x`` array, else its only one)."""
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"calibration file {path} does not exist; pass a .npy or .npz file of samples")
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CalibrationError(f"cannot read calibration file {path}: {e}; expected a .npy or .npz file") from e
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                if "x" in names:
                    x = loaded["x"]
                elif len(names) == 1:
                    x = loaded[names[0]]
                else:
                    raise CalibrationError(
                        f"calibration file {path} holds arrays {names}; name the samples 'x' (np.savez(path, x=...))"
                    )
        else:
            x = loaded
        return cls.from_array(x, input_shape=input_shape, source=f"file {path}", limit=limit, seed=seed)

    def samples(self) -> Iterator[np.ndarray]:
        """One sample at a time, with a batch dimension of 1 (what a batch-1 device model is calibrated on)."""
        for i in range(len(self.x)):
            yield self.x[i : i + 1]
