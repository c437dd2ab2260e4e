"""An optimizer whose steps run inside the backward, so that gradients of the whole model never exist together.

PyTorch's "optimizer step in backward" recipe (`Tensor.register_post_accumulate_grad_hook`) wrapped as a
`torch.optim.Optimizer`, so `transformers.Trainer` and LR schedulers take it as they take any optimizer. For MFT it
saves the scores' gradients: 4 bytes per masked weight, once activations no longer dominate the peak (with gradient
checkpointing). Usage::

    optimizer = OptimizerInBackward(create_mft_optimizer(model, lr=0.1))
    Trainer(model, TrainingArguments(..., max_grad_norm=0), optimizers=(optimizer, None))
"""

from __future__ import annotations

import torch


class OptimizerInBackward(torch.optim.Optimizer):
    """An optimizer whose work happens in the backward: one optimizer per parameter, stepped from a
    post-accumulate-grad hook that then frees the gradient, so gradients of the whole model never exist together.

    `step()` and `zero_grad()` do nothing. `param_groups` are always the per-parameter optimizers' current group
    dicts, so an LR scheduler (Trainer's included) that sets `group["lr"]` drives them; `state` gathers theirs, and
    `state_dict()` / `load_state_dict()` save and restore every per-parameter optimizer (Trainer checkpoints). Not for
    gradient accumulation or clipping (each gradient is consumed as soon as it is complete): train with
    `max_grad_norm=0`."""

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

    def _step_and_free(self, param: torch.Tensor) -> None:
        self.optimizers[param].step()
        param.grad = None

    def step(self, closure=None) -> None:
        pass

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
