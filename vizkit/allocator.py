"""Keep freed memory in the process while training, so every step does not pay for fresh pages.

glibc's malloc serves each block over 128 KiB with its own mmap and gives it back on free; it raises that
threshold only when such a block is freed (up to 32 MiB), and trims the heap again whenever its free top
passes twice the threshold. A training step allocates and frees tens of MB of activations, so until something
allocates a larger block (the first validation pass, 1000 images at a time) each step faults every page back
in: on 2 cores the default model's first epoch took 3,100 to 3,800 page faults a step and ran 4 to 19% slower
than the second (experiments/results/profile-20261124*.json). Fixed thresholds put the blocks on the heap
from the first step.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # blocks under it come from the heap (every activation of the zoo at batch 1000)
TRIM_THRESHOLD = 512 << 20  # free heap kept before any is given back
# glibc's own ceiling: where its self-adjusting thresholds end up once large blocks have come and gone (and, we
# understand, the most some older versions accept). Any mallopt call stops the adjusting for good, so this is
# what comes after training.
CEILING_MMAP_THRESHOLD = 32 << 20
CEILING_TRIM_THRESHOLD = 64 << 20


@cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process; False (and nothing changed) on any other C library."""
    libc = _libc()
    if libc is None:
        return False
    if not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        libc.mallopt(M_MMAP_THRESHOLD, CEILING_MMAP_THRESHOLD)
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def give_back_freed_memory() -> None:
    """The free heap back to the system, and glibc's ceiling thresholds from here on: what comes after training
    (the test pass, the ONNX export) then holds no more memory than glibc itself would let it."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, CEILING_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, CEILING_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """keep_freed_memory() for the duration (the training epochs), give_back_freed_memory() after."""
    try:
        yield keep_freed_memory()
    finally:
        give_back_freed_memory()
