"""Keep freed memory for reuse in the processes that move whole models message after message (glibc's malloc).

Every client message moves the model through a handful of buffers of the model's size: the message's bytes as Ray
or gRPC hands them over, ``Array.numpy()``'s copy, the reply's ``.npy`` bytes, the reply as pickled for Ray. With
glibc's defaults each such block is a fresh ``mmap`` (blocks above 128 KiB) that is unmapped again when freed, and a
heap whose free top exceeds 128 KiB is shrunk at once: every block of every message is paid for again in page
faults and zeroed pages. Measured on this project's 2-core machine, one Ray actor echoing a message of the 1.66M-
parameter mnist-cnn (6.6 MB) as the ClientApp does (``to_torch_state_dict``, a reply ``ArrayRecord``): 26-28 ms
of the actor's CPU and 13-14 ms of the driver's a message with the defaults, 9 ms and 7.5 ms with blocks up to
32 MiB served from the heap and up to 64 MiB of its free top kept (glibc's own dynamic rule keeps twice the mmap
threshold). A process keeps at most that much freed memory beyond what it uses.

:func:`reuse_freed_memory` is called by the ClientApp's handlers, by ``fedge simulate``'s driver and by the
ServerApp; it does nothing off glibc or with ``FEDGE_GLIBC_MALLOC_DEFAULTS=1`` in the environment (to compare).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

#: mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed mmap threshold on 64-bit
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
DEFAULTS_ENV = "FEDGE_GLIBC_MALLOC_DEFAULTS"


@functools.cache
def reuse_freed_memory() -> bool:
    """Serve blocks up to 32 MiB from the heap and keep up to 64 MiB of its freed top, once per process; True
    where glibc took both settings. Idempotent and cheap after the first call."""
    if sys.platform != "linux" or os.environ.get(DEFAULTS_ENV, "") not in ("", "0"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
