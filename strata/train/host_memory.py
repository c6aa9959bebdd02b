"""Host memory between training steps: keep freed buffers for the next step instead of handing them
back to the operating system.

Each step frees buffers of the same sizes it allocates again a moment later: the gradients that
`zero_grad(set_to_none=True)` drops, the activations of the last forward pass. glibc serves blocks
above its mmap threshold (128 KiB, rising with use up to 32 MiB) with fresh mappings and returns the
heap's free top above its trim threshold, so the next step faults every page of them in again: in a
new process, the first epoch of the MNIST MLP took ~984k minor page faults where a plain loop took ~178k.
Raising both thresholds once keeps those blocks in the heap, where the next step reuses them (what
PyTorch's caching allocator does for GPU memory). Only glibc has these knobs; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 64 << 20  # blocks up to 64 MiB come from the heap and are reused
TRIM_THRESHOLD = 256 << 20  # up to 256 MiB of free heap top is kept
_applied = False


def keep_freed_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once; True when they are set. A person's
    own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ settings are left as they are."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_",
                                                                              "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
