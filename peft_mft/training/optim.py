# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""An optimizer that gives MFT scores their own parameter group."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..layer import MFTLayer


# The step a score takes per optimizer step with the default rates, in score units: soft masks learn at about 0.1
# (the paper's rate), hard masks at about 0.01 (a typical |W| / mean |W| score moves ~1% per Adam step, so the ranking
# changes gradually). The optimizer's rate is this divided by the adapter's `score_scale`.
DEFAULT_SCORE_STEP = 0.1
DEFAULT_HARD_SCORE_STEP = 0.01
# Ordinary weights (`modules_to_save`) are trained as in full fine-tuning, at TRL's default rate.
DEFAULT_OTHER_LR = 2e-5


def score_parameters(model: nn.Module, mask_type: Optional[str] = None) -> list[nn.Parameter]:
    """The trainable MFT score tensors of `model` (a PeftModel or anything containing MFT layers); only those of
    soft or hard masks when `mask_type` is "soft" / "hard"."""
    return [param for _, kind, param in _score_tensors(model) if mask_type in (None, kind)]


def _score_tensors(model: nn.Module) -> list[tuple[float, str, nn.Parameter]]:
    """(default optimizer learning rate, mask type, parameter) for every trainable score tensor of `model`."""
    found = []
    for module in model.modules():
        if not isinstance(module, MFTLayer):
            continue
        for name, param in module.mft_scores.items():
            if param.requires_grad:
                spec = module.mft_mask_spec[name]
                step = DEFAULT_SCORE_STEP if spec.mask_type == "soft" else DEFAULT_HARD_SCORE_STEP
                found.append((step / spec.score_scale, spec.mask_type, param))
    return found


def create_mft_optimizer(
    model: nn.Module,
    lr: Optional[float] = None,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    other_lr: float = DEFAULT_OTHER_LR,
    other_weight_decay: float = 0.0,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """An optimizer with the scores in their own groups (no weight decay) and other trainable weights in another.

    Optional: with MFT's default `score_scale`, `transformers.Trainer` / TRL at the learning rates used for LoRA train
    masks as well. This sets the scores' rate apart: `lr` for every score tensor, or by default each adapter's
    `DEFAULT_SCORE_STEP / score_scale` (soft, 0.1 / 4096 ~ 2.4e-5) or `DEFAULT_HARD_SCORE_STEP / score_scale` (hard,
    0.01 / 256 ~ 3.9e-5): a score step of about 0.1 (soft) or 0.01 (hard) per Adam step, for adapters of any scale.

    Other trainable parameters (`modules_to_save`, e.g. a whole `lm_head`) go in a group with `other_lr` (default
    2e-5, a full fine-tuning rate) and `other_weight_decay`. Pass the result to
    `transformers.Trainer(..., optimizers=(optimizer, None))`. `optimizer_kwargs` go to `optimizer_cls`.

    Args:
        model: A `PeftModel` (or any module) holding MFT layers; its trainable scores and other trainable parameters
            are optimized.
        lr: The optimizer's learning rate for every score tensor. None: each adapter's default score step (0.1 soft,
            0.01 hard) divided by its `score_scale`.
        optimizer_cls: The optimizer class (default `torch.optim.AdamW`).
        other_lr: The learning rate of trainable parameters that are not scores (`modules_to_save`).
        other_weight_decay: Their weight decay (scores get none).
        **optimizer_kwargs: Passed to `optimizer_cls`, e.g. `betas`.

    Returns:
        The optimizer. Raises `ValueError` when `model` has no trainable MFT scores.
    """
    scores = _score_tensors(model)
    if not scores:
        raise ValueError("create_mft_optimizer found no trainable MFT scores; is this a model made with MFTConfig?")
    by_rate: dict[float, list[nn.Parameter]] = {}
    for rate, _, param in scores:
        by_rate.setdefault(rate if lr is None else lr, []).append(param)
    score_ids = {id(param) for *_, param in scores}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in score_ids]
    groups = [{"params": params, "lr": rate, "weight_decay": 0.0} for rate, params in by_rate.items()]
    if others:
        groups.append({"params": others, "lr": other_lr, "weight_decay": other_weight_decay})
    return optimizer_cls(groups, lr=groups[0]["lr"], **optimizer_kwargs)
