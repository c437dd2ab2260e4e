# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Peak live-tensor bytes of a training step, by what the tensors hold: what a GPU user means by memory.

`torch.cuda.max_memory_allocated` counts the bytes of live tensors; a CPU process's resident set adds allocator
caches, file pages and the runtime, which move it by hundreds of MiB (benchmarks/README.md). `TensorMemory` counts
live tensor storages on any device: the ones alive when it starts (parameters, buffers, gradients, optimizer state)
and every storage an operator creates inside it (a `TorchDispatchMode`), each until it is freed. It records the
largest total and the storages alive at that moment, and sorts them into categories when asked (`peak_by_category`):

- `frozen_weights`: parameters that do not require grad (and buffers);
- `trainable`: parameters that require grad (MFT scores, LoRA factors, or every weight in full fine-tuning);
- `gradients`: the `.grad` of a parameter;
- `optimizer_state`: tensors in `optimizer.state` (AdamW moments, 8-bit states and their scales);
- `activations_and_temporaries`: everything else (saved activations, workspace, masked weights, logits).

Storages are sorted by identity, not by address, so a freed activation whose address a gradient reuses later stays an
activation. Gradients are recognised as they reach their parameter (a tensor hook), so those an optimizer stepped in
the backward frees at once (`OptimizerInBackward`) still count as gradients. Views share their base's storage and count
once. Tensors made outside PyTorch's dispatcher (bitsandbytes' C kernels writing into preallocated buffers) are counted
through the buffer PyTorch allocated for them.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import TrainerCallback


CATEGORIES = ("frozen_weights", "trainable", "gradients", "optimizer_state", "activations_and_temporaries")


class TensorMemory(TorchDispatchMode):
    """Context manager: peak live tensor bytes inside it (see the module docstring).

    `model`, `optimizer`: what the step uses; their tensors alive at entry are counted from the start.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None):
        super().__init__()
        self.model, self.optimizer = model, optimizer
        self._ids = itertools.count()
        self._live: dict[int, int] = {}  # allocation id -> bytes
        self._id_of_storage: dict[int, int] = {}  # id(storage object) -> allocation id (while alive)
        self._refs: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0
        self._peak_ids: dict[int, int] = {}
        self._gradient_ids: set[int] = set()
        self._hooks = []

    # -- bookkeeping ------------------------------------------------------------------------------------------------

    def _track(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
            return
        key = id(storage)
        if key in self._id_of_storage and self._refs[key]() is storage:
            return
        allocation = next(self._ids)
        nbytes = storage.nbytes()
        self._id_of_storage[key] = allocation
        self._live[allocation] = nbytes
        self._refs[key] = weakref.ref(storage, lambda _, key=key, allocation=allocation: self._free(key, allocation))
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current
            self._peak_ids = dict(self._live)

    def _free(self, key: int, allocation: int) -> None:
        nbytes = self._live.pop(allocation, 0)
        self.current -= nbytes
        if self._id_of_storage.get(key) == allocation:
            del self._id_of_storage[key]
            del self._refs[key]

    def _existing_tensors(self) -> Iterable[torch.Tensor]:
        yield from self.model.parameters()
        yield from self.model.buffers()
        yield from (p.grad for p in self.model.parameters() if p.grad is not None)
        yield from self._optimizer_tensors()

    def _optimizer_tensors(self) -> Iterable[torch.Tensor]:
        if self.optimizer is None:
            return
        for state in self.optimizer.state.values():
            for value in tree_flatten(state)[0]:
                if isinstance(value, torch.Tensor):
                    yield value

    def _tag_gradient(self, grad: torch.Tensor) -> None:
        self._track(grad)
        if (allocation := self._allocation_of(grad)) is not None:
            self._gradient_ids.add(allocation)

    def __enter__(self):
        for tensor in self._existing_tensors():
            self._track(tensor)
        self.peak = self.current
        self._peak_ids = dict(self._live)
        self._hooks = [p.register_hook(self._tag_gradient) for p in self.model.parameters() if p.requires_grad]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    # -- results ------------------------------------------------------------------------------------------------------

    def _allocation_of(self, tensor: torch.Tensor) -> Optional[int]:
        storage = tensor.untyped_storage()
        allocation = self._id_of_storage.get(id(storage))
        return allocation if allocation is not None and self._refs[id(storage)]() is storage else None

    def peak_by_category(self) -> dict[str, int]:
        """Bytes per category (`CATEGORIES`) of the storages alive at the peak, and `peak` (their sum). Call it after
        the step, while the gradients and optimizer state it made are still alive (before `zero_grad`)."""
        category: dict[int, str] = dict.fromkeys(self._gradient_ids, "gradients")
        for param in self.model.parameters():
            if (allocation := self._allocation_of(param)) is not None:
                category[allocation] = "trainable" if param.requires_grad else "frozen_weights"
            if param.grad is not None and (allocation := self._allocation_of(param.grad)) is not None:
                category[allocation] = "gradients"
        for buffer in self.model.buffers():
            if (allocation := self._allocation_of(buffer)) is not None:
                category.setdefault(allocation, "frozen_weights")
        for tensor in self._optimizer_tensors():
            if (allocation := self._allocation_of(tensor)) is not None:
                category[allocation] = "optimizer_state"
        out = dict.fromkeys(CATEGORIES, 0)
        for allocation, nbytes in self._peak_ids.items():
            out[category.get(allocation, "activations_and_temporaries")] += nbytes
        out["peak"] = sum(out[c] for c in CATEGORIES)
        return out


class TensorMemoryCallback(TrainerCallback):
    """`TensorMemory` over one optimizer step of `Trainer.train()`: forward, backward and `optimizer.step()` of the
    `step`-th step (default the second, when the optimizer state exists; the last if training is shorter).
    `by_category`: `TensorMemory.peak_by_category()` of that step (bytes), None until it has run. The batch is built
    before the step begins, so its few input tensors are not counted (nor are they in benchmarks.train_step). That
    step runs slower (every operator passes through the mode), and the step times of `harness.training` include it."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int = 2):
        if step < 1:
            raise ValueError(f"TensorMemoryCallback: step counts optimizer steps from 1, got {step}")
        self.model, self.optimizer, self.step = model, optimizer, step
        self.by_category: Optional[dict[str, int]] = None
        self._mode: Optional[TensorMemory] = None

    def on_step_begin(self, args, state, control, **kwargs):
        target = self.step if args.max_steps <= 0 else min(self.step, args.max_steps)
        if self.by_category is None and self._mode is None and state.global_step + 1 == target:
            self._mode = TensorMemory(self.model, self.optimizer)
            self._mode.__enter__()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._mode is not None:  # before zero_grad, while the step's gradients are alive
            self._mode.__exit__(None, None, None)
            self.by_category, self._mode = self._mode.peak_by_category(), None
