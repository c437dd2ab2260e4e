"""When scores may have changed: a tensor's own version counter, its storage, and a count of optimizer steps.

A hard mask's threshold (a selection over the whole score matrix) depends only on the scores, so an MFT layer keeps
it until the scores change. In-place writes through the parameter (`optimizer.step()` in torch's optimizers,
`load_state_dict`, `copy_`) bump its version counter; replacing `param.data` changes its storage. Optimizers that
write through `param.data` (bitsandbytes' 8-bit optimizers, for instance) bump neither, so every optimizer step
anywhere also counts (`torch.optim`'s global step hook, which every `torch.optim.Optimizer` subclass runs).
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def score_version(scores: torch.Tensor) -> tuple:
    """A key that changes whenever `scores` may have changed (see the module docstring): the tensor object, its
    version counter, storage, device and dtype, and the optimizer steps so far. Writes through `.data` outside an
    optimizer step are the one change it misses: call `MFTLayer.forget_hard_thresholds()` after those."""
    return (_optimizer_steps, id(scores), scores._version, scores.data_ptr(), str(scores.device), scores.dtype)
