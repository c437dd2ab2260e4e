# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""An optimizer whose steps run inside the backward, so that gradients of the whole model never exist together.

PyTorch's "optimizer step in backward" recipe (`Tensor.register_post_accumulate_grad_hook`) wrapped as a
`torch.optim.Optimizer`, so `transformers.Trainer` and LR schedulers take it as they take any optimizer. For MFT it
saves the scores' gradients: 4 bytes per masked weight, once activations no longer dominate the peak (with gradient
checkpointing). Usage::

    optimizer = OptimizerInBackward(create_mft_optimizer(model, lr=0.1))
    Trainer(model, TrainingArguments(..., max_grad_norm=0), optimizers=(optimizer, None))

Gradient accumulation and clipping cannot work this way (each gradient is consumed the moment it is complete, before
the next micro-batch adds to it and before a global norm exists), so both are refused rather than ignored: a second
backward without a `step()` between raises before it updates anything, and `transformers.Trainer` arguments asking
for either are refused when training starts.
"""

from __future__ import annotations

import sys

import torch


class OptimizerInBackward(torch.optim.Optimizer):
    """An optimizer whose work happens in the backward: one optimizer per parameter, stepped from a
    post-accumulate-grad hook that then frees the gradient, so gradients of the whole model never exist together.

    `step()` and `zero_grad()` do nothing. `param_groups` are always the per-parameter optimizers' current group
    dicts, so an LR scheduler (Trainer's included) that sets `group["lr"]` drives them; `state` gathers theirs, and
    `state_dict()` / `load_state_dict()` save and restore every per-parameter optimizer (Trainer checkpoints).

    Refuses gradient accumulation (`RuntimeError` at the second backward without a `step()` between, before any
    parameter is updated twice) and clipping (`ValueError` from `check_training_arguments`, which `Trainer` reaches
    through `optimizer.train()` before its first forward): train with `max_grad_norm=0` and
    `gradient_accumulation_steps=1`, and call `step()` once per backward as with any optimizer.

    Args:
        optimizer: The optimizer to split into one per parameter (e.g. `create_mft_optimizer(model)`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizers = {}
        for group in optimizer.param_groups:
            options = {k: v for k, v in group.items() if k != "params"}
            for param in group["params"]:
                self.optimizers[param] = type(optimizer)([{"params": [param], **options}])
                param.register_post_accumulate_grad_hook(self._step_and_free)
        # Not Optimizer.__init__, which builds groups of its own (see `param_groups`); __setstate__ sets up the hook
        # registries and step patching as unpickling does.
        self.__setstate__({"defaults": dict(optimizer.defaults)})
        self._stepped_since_step_call: set[torch.Tensor] = set()
        self._trainer_checked = False

    def _step_and_free(self, param: torch.Tensor) -> None:
        if param in self._stepped_since_step_call:
            raise RuntimeError(
                "OptimizerInBackward: a second backward reached this parameter without optimizer.step() between. "
                "Its step runs inside each backward, so gradient accumulation would apply one update per micro-batch "
                "instead of one per accumulated batch; use gradient_accumulation_steps=1 (raise the batch size, or "
                "use the plain optimizer) and call step() once per backward."
            )
        self._stepped_since_step_call.add(param)
        self.optimizers[param].step()
        param.grad = None

    def step(self, closure=None) -> None:
        """The updates already ran in the backward; this only marks the end of one optimizer step."""
        self._stepped_since_step_call.clear()

    @staticmethod
    def check_training_arguments(args) -> None:
        """Raise `ValueError` for `TrainingArguments` (or any object with the same fields) asking for what this
        optimizer cannot do: gradient clipping (`max_grad_norm > 0`) or accumulation (`gradient_accumulation_steps
        > 1`)."""
        problems = []
        if (getattr(args, "max_grad_norm", 0) or 0) > 0:
            problems.append(f"max_grad_norm={args.max_grad_norm} (clipping needs the global gradient norm, which "
                            "never exists: each gradient is consumed as soon as it is complete); set max_grad_norm=0")
        if (getattr(args, "gradient_accumulation_steps", 1) or 1) > 1:
            problems.append(f"gradient_accumulation_steps={args.gradient_accumulation_steps} (each micro-batch "
                            "would take its own step); set it to 1 and raise the batch size")
        if problems:
            raise ValueError("OptimizerInBackward cannot honour " + "; ".join(problems) + ".")

    def train(self) -> None:
        """Called by `transformers.Trainer` (through accelerate's wrapper) before each training step: the first call
        checks the calling Trainer's arguments (`check_training_arguments`)."""
        if self._trainer_checked:
            return
        self._trainer_checked = True
        trainer_cls = getattr(sys.modules.get("transformers"), "Trainer", None)
        frame = sys._getframe(1)
        for _ in range(4):  # Trainer.training_step -> AcceleratedOptimizer.train -> this
            if frame is None:
                break
            caller = frame.f_locals.get("self")
            if trainer_cls is not None and isinstance(caller, trainer_cls):
                self.check_training_arguments(caller.args)
                return
            frame = frame.f_back

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    @property
    def param_groups(self) -> list[dict]:
        # read afresh each time: a per-parameter optimizer's load_state_dict replaces its group dicts
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {param: opt.state[param] for param, opt in self.optimizers.items() if param in opt.state}

    def state_dict(self) -> dict:
        return {"per_parameter": [opt.state_dict() for opt in self.optimizers.values()]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("per_parameter")
        if saved is None or len(saved) != len(self.optimizers):
            count = "no per-parameter states" if saved is None else f"{len(saved)} per-parameter states"
            raise ValueError(f"OptimizerInBackward.load_state_dict: the state dict holds {count}, this optimizer has "
                             f"{len(self.optimizers)} parameters (was it saved from another model or optimizer?).")
        for opt, opt_state in zip(self.optimizers.values(), saved):
            opt.load_state_dict(opt_state)
