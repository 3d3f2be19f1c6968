"""Native libraries' own log lines (LiteRT's "Created TensorFlow Lite XNNPACK delegate for CPU", XLA's and
TensorFlow's C++ logs) go to a file while fedge packages, verifies or times a model, instead of into its output."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def native_stderr_to(log: Path, *, enabled: bool = True) -> Iterator[None]:
    """Send what native libraries write to file descriptor 2 (LiteRT's "Created TensorFlow Lite XNNPACK delegate",
    XLA's and TensorFlow's C++ logs) to ``log`` while the block runs; Python's own output is untouched unless it
    goes to ``sys.stderr``, which is flushed first. ``enabled=False`` (``--verbose``) leaves stderr alone."""
    if not enabled:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "ab") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
