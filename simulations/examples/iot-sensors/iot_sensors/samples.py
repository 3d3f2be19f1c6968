"""Write the held-out windows a device runs: ``python -m iot_sensors.samples data/BasicMotions_TEST.ts held-out.npz``.

The TEST file holds other recordings than the TRAIN file the federation trained on; the agent reads the ``.npz``
(``x`` samples, ``y`` labels) with ``--data`` and reports its accuracy on them.
"""

from __future__ import annotations

import sys

import numpy as np

from iot_sensors.task import load_data


def write_samples(ts_path: str, out_path: str, *, window: int = 50, stride: int = 50) -> int:
    """Non-overlapping windows of ``ts_path`` saved as ``x``/``y`` in ``out_path``; the number of windows."""
    x, y = load_data(ts_path, window=window, stride=stride)
    np.savez(out_path, x=x.astype(np.float32), y=y.astype(np.int64))
    return len(x)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m iot_sensors.samples TS_FILE OUT.npz")
    print(f"{write_samples(sys.argv[1], sys.argv[2])} windows written to {sys.argv[2]}")
