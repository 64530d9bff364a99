"""Running well on a small CPU that other processes share: how many threads, and the C heap.

    from tunesmith import cpu
    cpu.use_heap(); torch.set_num_threads(cpu.threads())
    meter = cpu.OthersMeter(); ...; torch.set_num_threads(cpu.threads(others=meter.read()))
    cpu.trim()  # between training steps

Both are measured choices, made for the 2-core machines tunesmith's demo runs on; on a GPU they do
nothing that matters, and off Linux/glibc the heap functions do nothing at all.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import time

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc has both; musl has neither
        return libc
    except (OSError, AttributeError):
        return None


def use_heap() -> None:
    """Serve tensors up to 32 MiB from glibc's heap, and keep up to 512 MiB of free heap.

    Every block that is not reused is a fresh mapping the kernel must fault in and zero, page by
    page. A training step allocates gigabytes of short-lived activations, and decoding grows the KV
    cache step by step: served as mappings, most of their time goes to the kernel (figures in
    docs/train.md, "CPU settings"). The cost of the heap is that it keeps pages it has touched:
    trim() hands them back.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's own ceiling for this threshold
        libc.mallopt(_M_TRIM_THRESHOLD, 512 * 1024 * 1024)


def trim() -> None:
    """Return the heap's free pages to the OS (between training steps, when activations are gone).

    Without it the heap's high-water mark only grows, as steps of different lengths leave holes of
    different sizes; the page faults it costs are small next to a step (docs/train.md)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def threads(configured: int = 0, others: float | None = None) -> int:
    """Threads for torch: `configured`, else OMP_NUM_THREADS, else the cores other processes leave
    free (`others`: cores they keep busy; measured for a quarter second when not given), at least one.

    Every op waits for its slowest thread, so a thread that shares its core with another process
    stalls the whole pool (docs/train.md). On an idle machine, every core.
    """
    if configured > 0:
        return configured
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = _cores()
    if others is None:
        meter = OthersMeter()
        time.sleep(0.25)
        others = meter.read()
    return max(1, min(len(cores), math.floor(len(cores) - others + 0.5)))


class OthersMeter:
    """Cores that other processes kept busy since the last read: the busy time /proc/stat counts on
    our CPUs, less our own process's CPU time. Where /proc/stat is missing, the 1-minute load
    average less our own share (which lags by about a minute)."""

    def __init__(self):
        self._last = self._sample()

    def read(self) -> float:
        now = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        if busy0 is None or busy1 is None:
            own = (own1 - own0) / max(t1 - t0, 1e-6)
            return max(0.0, os.getloadavg()[0] - own) if hasattr(os, "getloadavg") else 0.0
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-6))

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        return time.monotonic(), _busy_seconds(), time.process_time()


def _cores() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _busy_seconds() -> float | None:
    """CPU-seconds spent busy on the CPUs this process may run on, since boot (None: no /proc/stat)."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    mine, busy = {f"cpu{i}" for i in _cores()}, 0
    for line in lines:
        name, *fields = line.split()
        if name in mine:
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(values) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")
