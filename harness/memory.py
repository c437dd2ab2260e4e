# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Peak memory of a training run, measured the same way by the examples and the benchmarks."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback


def rss_bytes() -> int | None:
    """The process's resident set size now (Linux `/proc/self/statm`), in bytes; None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class PeakMemory:
    """Peak memory between `reset()` and `read()`, in bytes.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: the process's resident-set high-water mark (`VmHWM`), reset by
    writing 5 to `/proc/self/clear_refs` (Linux), so the peak is exact rather than sampled; it includes everything the
    process holds (model, optimizer state, activations, allocator caches, the Python runtime).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError as exc:
            raise RuntimeError(
                "Measuring peak CPU memory needs Linux's /proc/self/clear_refs to reset the RSS high-water mark; "
                f"it failed with {exc}."
            ) from exc

    def read(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("/proc/self/status has no VmHWM line; cannot read the peak resident set size.")


class PeakMemoryCallback(TrainerCallback):
    """`PeakMemory` over `Trainer.train()`: reset at the start of training, read at its end (`peak_bytes`, `kind`)."""

    def __init__(self, device: torch.device | None = None):
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.memory = PeakMemory(device)
        self.kind = self.memory.kind
        self.peak_bytes = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.memory.reset()

    def on_train_end(self, args, state, control, **kwargs):
        self.peak_bytes = self.memory.read()
