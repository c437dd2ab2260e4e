# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Timing and memory measurement shared by the benchmarks: interleaved repeats, medians, peak memory, machine load."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import statistics
import time
from typing import Callable, Optional

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseMarks:
    """Wall-clock marks between the phases of one step, the device synchronized at each mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.marks = [time.perf_counter()]

    def mark(self) -> None:
        synchronize(self.device)
        self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds of each phase, in order."""
        return [end - begin for begin, end in zip(self.marks, self.marks[1:])]


def time_interleaved(
    functions: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin (A B C A B C ...) so that load from other processes
    hits every function alike. `warmup` untimed rounds first."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(seconds: list[float]) -> dict:
    """Median and spread (interquartile range, min, max) of a list of durations, in seconds."""
    quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return {
        "median": statistics.median(seconds),
        "iqr": quartiles[2] - quartiles[0],
        "min": min(seconds),
        "max": max(seconds),
        "n": len(seconds),
    }


def load_average() -> Optional[list[float]]:
    """1, 5 and 15 minute load averages of the machine (None where the OS does not report them)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_description(device: torch.device) -> dict:
    info = {
        "device": device.type,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # settings that change speed or memory (allocator, thread pools)
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("MALLOC_", "OMP_", "MKL_"))},
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            info["device_name"] = names[0] if names else info["cpu"]
        except OSError:
            info["device_name"] = info["cpu"]
    return info


_MADV_DONTNEED = 4


def release_checkpoint_pages(suffix: str = ".safetensors") -> int:
    """Drop this process's resident pages of memory-mapped checkpoint files (Linux); returns the bytes of mappings.

    `from_pretrained` maps safetensors files and its tensors view them. A weight that set-up replaced (cast to bf16,
    quantized to 4-bit) leaves its file pages resident and counted in RSS although nothing reads them. Call this after
    set-up and before training: no page has been written yet, so dropping is safe, and pages still in use (frozen
    weights) are simply read back from the file on their next access, where they count again.
    """
    try:
        with open("/proc/self/maps") as f:
            ranges = [line.split()[0] for line in f if line.rstrip().endswith(suffix)]
    except OSError:
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    for address_range in ranges:
        start, end = (int(part, 16) for part in address_range.split("-"))
        if libc.madvise(start, end - start, _MADV_DONTNEED) != 0:
            raise OSError(ctypes.get_errno(), f"madvise(MADV_DONTNEED) failed on a mapping of a {suffix} file")
        released += end - start
    return released
