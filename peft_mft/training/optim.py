"""An optimizer that gives MFT scores their own parameter group."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..layer import MFTLayer

DEFAULT_SCORE_LR = 0.1
# Hard-mask scores start at |W| / mean |W| (unit mean): 0.01 moves a typical one by ~1% per Adam step, so the
# ranking by |S| changes gradually. The paper gives no H-MFT learning rate; the authors' code trains N(0, 0.02)
# scores at 2e-5. On the embedded model 0.1 led over 160 steps but collapsed over 640, before the gradient got
# its sign(S) (docs/method.md).
DEFAULT_HARD_SCORE_LR = 0.01
# Ordinary weights (`modules_to_save`) are trained as in full fine-tuning; 3e-5 is the full fine-tuning learning rate
# picked on validation for the embedded model (examples/RESULTS.md). The scores' 0.1 would wreck a pretrained lm_head.
DEFAULT_OTHER_LR = 3e-5


def score_parameters(model: nn.Module, mask_type: Optional[str] = None) -> list[nn.Parameter]:
    """The trainable MFT score tensors of `model` (a PeftModel or anything containing MFT layers); only those of
    soft or hard masks when `mask_type` is "soft" / "hard"."""
    return [
        param
        for module in model.modules()
        if isinstance(module, MFTLayer)
        for name, param in module.mft_scores.items()
        if param.requires_grad and mask_type in (None, module.mft_mask_spec[name].mask_type)
    ]


def create_mft_optimizer(
    model: nn.Module,
    lr: Optional[float] = None,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    other_lr: float = DEFAULT_OTHER_LR,
    other_weight_decay: float = 0.0,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """An optimizer with the scores in their own groups (no weight decay): soft-mask scores at `lr` (default
    `DEFAULT_SCORE_LR`, 0.1), hard-mask scores at `lr` (default `DEFAULT_HARD_SCORE_LR`, 0.01).

    Why lr ~0.1: scores start at `init_score` (e.g. 7.0) where the sigmoid is flat (dM/dS = M(1-M)/T ~ 0.02), and
    weight decay would pull every score towards 0, i.e. every mask towards 0.5. The paper finds that small learning
    rates leave near-identity masks stuck and only about 0.1 learns.

    Other trainable parameters (`modules_to_save`, e.g. a whole `lm_head`) are ordinary weights: they go in a second
    group with `other_lr` (default 3e-5, a full fine-tuning learning rate, not the scores' 0.1) and
    `other_weight_decay`. Pass the result to `transformers.Trainer(..., optimizers=(optimizer, None))`.
    `optimizer_kwargs` go to `optimizer_cls` (e.g. `betas`, or `momentum` for SGD).
    """
    soft, hard = score_parameters(model, "soft"), score_parameters(model, "hard")
    if not soft and not hard:
        raise ValueError("create_mft_optimizer found no trainable MFT scores; is this a model made with MFTConfig?")
    score_ids = {id(p) for p in soft + hard}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in score_ids]
    groups = [
        {"params": params, "lr": default if lr is None else lr, "weight_decay": 0.0}
        for params, default in ((soft, DEFAULT_SCORE_LR), (hard, DEFAULT_HARD_SCORE_LR))
        if params
    ]
    if others:
        groups.append({"params": others, "lr": other_lr, "weight_decay": other_weight_decay})
    return optimizer_cls(groups, lr=groups[0]["lr"], **optimizer_kwargs)
