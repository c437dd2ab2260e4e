"""An optimizer that gives MFT scores their own parameter group."""

from __future__ import annotations

import torch
from torch import nn

from ..layer import MFTLayer

DEFAULT_SCORE_LR = 0.1
# Ordinary weights (`modules_to_save`) are trained as in full fine-tuning; 3e-5 is the full fine-tuning learning rate
# picked on validation for the embedded model (examples/RESULTS.md). The scores' 0.1 would wreck a pretrained lm_head.
DEFAULT_OTHER_LR = 3e-5


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable MFT score tensors of `model` (a PeftModel or anything containing MFT layers)."""
    return [
        param
        for module in model.modules()
        if isinstance(module, MFTLayer)
        for param in module.mft_scores.values()
        if param.requires_grad
    ]


def create_mft_optimizer(
    model: nn.Module,
    lr: float = DEFAULT_SCORE_LR,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    other_lr: float = DEFAULT_OTHER_LR,
    other_weight_decay: float = 0.0,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """An optimizer with the scores in their own group (learning rate `lr`, no weight decay).

    Why lr ~0.1: scores start at `init_score` (e.g. 7.0) where the sigmoid is flat (dM/dS = M(1-M)/T ~ 0.02), and
    weight decay would pull every score towards 0, i.e. every mask towards 0.5. The paper finds that small learning
    rates leave near-identity masks stuck and only about 0.1 learns.

    Other trainable parameters (`modules_to_save`, e.g. a whole `lm_head`) are ordinary weights: they go in a second
    group with `other_lr` (default 3e-5, a full fine-tuning learning rate, not the scores' 0.1) and
    `other_weight_decay`. Pass the result to `transformers.Trainer(..., optimizers=(optimizer, None))`.
    `optimizer_kwargs` go to `optimizer_cls` (e.g. `betas`, or `momentum` for SGD).
    """
    scores = score_parameters(model)
    if not scores:
        raise ValueError("create_mft_optimizer found no trainable MFT scores; is this a model made with MFTConfig?")
    score_ids = {id(p) for p in scores}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in score_ids]
    groups = [{"params": scores, "lr": lr, "weight_decay": 0.0}]
    if others:
        groups.append({"params": others, "lr": other_lr, "weight_decay": other_weight_decay})
    return optimizer_cls(groups, lr=lr, **optimizer_kwargs)
