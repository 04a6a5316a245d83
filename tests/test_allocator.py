import platform
import subprocess
import sys

import pytest

# In a fresh process (glibc's thresholds are process-wide): where a 40 MB tensor comes from, and whether the
# heap keeps its memory once the tensor is freed. mallinfo2 counts what malloc holds.
PROBE = """
import ctypes, sys, torch
from vizkit.allocator import give_back_freed_memory, keep_freed_memory

class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
kept = keep_freed_memory() if sys.argv[1] != "default" else None
if sys.argv[1] == "given back":  # after training: a tensor the kept heap held, then glibc's thresholds again
    x = torch.ones(10_000_000)
    del x
    give_back_freed_memory()
before = libc.mallinfo2()
x = torch.ones(10_000_000)
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(kept, during.hblkhd - before.hblkhd, during.arena - before.arena, after.arena - before.arena)
"""

TENSOR = 40_000_000  # bytes of torch.ones(10_000_000)
MB = 1 << 20


def probe(mode: str) -> tuple[str, int, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    kept, *sizes = out.split()
    return kept, *(int(s) for s in sizes)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_stays_in_the_heap_for_the_next_step():
    kept, mapped, heap, heap_after = probe("keep")
    assert kept == "True"
    # from the heap, and still there after the free: the next step's tensors reuse those pages
    assert mapped == 0 and heap >= TENSOR and heap_after >= TENSOR
    _, mapped, heap, heap_after = probe("default")
    # glibc's default: a block of its own, mmapped, and given back to the system when freed
    assert mapped >= TENSOR and heap < MB and heap_after < MB


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_after_training_the_heap_is_given_back():
    # the kept 40 MB went back to the system, and the next large tensor is mmapped as by default
    _, mapped, heap, heap_after = probe("given back")
    assert mapped >= TENSOR and heap < MB and heap_after < MB
