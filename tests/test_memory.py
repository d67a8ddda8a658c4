"""The storage allocator policy (storage/memory.py), in a fresh process each time.

Share-sized buffers must reuse warm heap memory (no page fault per page on
every new buffer) without resident memory growing with the bytes moved.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from poolai.storage import memory

pytestmark = pytest.mark.skipif(memory._LIBC is None, reason="glibc only")

_CHURN = """
import json, os, resource, sys, threading
from poolai.storage import memory
assert memory.tune_allocator()
source = bytearray(os.urandom(1 << 20))

def churn(rounds):
    for _ in range(rounds):
        kept = [bytes(source) for _ in range(4)]  # a segment's worth of 1 MiB shares
        del kept

churn(8)  # warm up
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(100)
worker = threading.Thread(target=churn, args=(100,))  # as the offload threads do
worker.start()
worker.join()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
rss = int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
print(json.dumps({"faults": faults, "rss_kib": rss}))
"""


def test_share_buffers_reuse_warm_memory_and_stay_bounded():
    out = subprocess.run([sys.executable, "-c", _CHURN], capture_output=True, text=True, timeout=120,
                         check=True)
    report = json.loads(out.stdout)
    # 800 MiB copied through fresh 1 MiB buffers: a mapping per buffer would fault on each
    # of its 256 pages (over 200,000 faults); reused heap memory faults only while it grows.
    assert report["faults"] < 5_000, report
    assert report["rss_kib"] < 64 * 1024, report


def test_in_page_cache_tells_untouched_pages_from_read_ones(tmp_path):
    import mmap

    path = tmp_path / "sparse"
    with path.open("wb") as handle:
        handle.truncate(1 << 20)  # a hole: no page of it has been read, none is cached
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        view = memoryview(mapped)
        assert memory.in_page_cache(view[4096:8192]) is False
        assert bytes(view) == bytes(1 << 20)  # reading brings every page in
        assert memory.in_page_cache(view) is True
        assert memory.in_page_cache(view[100:200]) is True  # unaligned ranges too
        view.release()
