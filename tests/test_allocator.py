import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# In a fresh process (glibc's thresholds are process-wide): where a tensor of SIZE bytes comes from (mmapped or
# the heap, by mallinfo2) and whether its memory stays in the process once freed. "given back": the thresholds
# vizkit trains with, a 40 MB tensor held and freed, then give_back_freed_memory(), as after training.
PROBE = """
import ctypes, json, os, sys, torch
from vizkit.allocator import give_back_freed_memory, keep_freed_memory

class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
mode, size = sys.argv[1], int(sys.argv[2])
out = {"kept": keep_freed_memory() if mode != "default" else None}
if mode == "given back":
    x = torch.ones(10_000_000)
    del x
    before = resident()
    give_back_freed_memory()
    out["returned"] = before - resident()
before = libc.mallinfo2()
x = torch.ones(size // 4)
during = libc.mallinfo2()
out["mapped"] = during.hblkhd - before.hblkhd
out["from_heap"] = during.uordblks - before.uordblks
rss = resident()
del x
out["kept_after_free"] = rss - resident() < size // 2
print(json.dumps(out))
"""

MB = 1 << 20


def probe(mode: str, size: int) -> dict:
    cmd = [sys.executable, "-c", PROBE, mode, str(size)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def test_while_training_freed_memory_stays_for_the_next_step():
    # a default-model activation at batch 1000 is 50 MB: from the heap, and still there after the free
    kept = probe("keep", 50_000_000)
    assert kept["kept"] is True and kept["mapped"] == 0 and kept["from_heap"] >= 50_000_000
    assert kept["kept_after_free"]
    # glibc at start-up: a block of its own, mmapped, and given back to the system when freed
    default = probe("default", 50_000_000)
    assert default["mapped"] >= 50_000_000 and default["from_heap"] < MB and not default["kept_after_free"]


@pytest.mark.slow  # three processes that import torch
def test_after_training_the_memory_goes_back_and_glibcs_ceiling_holds():
    # the 40 MB the kept heap held goes back to the system; then glibc's own ceiling (32 MiB): a 40 MB block
    # is mmapped and freed for good, a 20 MB one comes from the heap (glibc at start-up would mmap it)
    large = probe("given back", 40_000_000)
    assert large["returned"] >= 38_000_000 and large["mapped"] >= 40_000_000 and not large["kept_after_free"]
    small = probe("given back", 20_000_000)
    assert small["mapped"] == 0 and small["from_heap"] >= 20_000_000
    assert probe("default", 20_000_000)["mapped"] >= 20_000_000
