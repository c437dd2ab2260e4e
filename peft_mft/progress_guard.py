# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""A warning when training runs but the masks do not move: a learning rate too small for the scores.

A soft mask moves by `dM/dS * score_scale * step` per optimizer step of size `step` on the trained tensor P; with
`score_scale` 1 and the learning rates used for LoRA (1e-5 to 2e-4) that is ~1e-6 per step, and training changes
nothing without an error. `MaskProgressGuard` watches a model's first training forward passes: it keeps a small
sample of each adapter's P at the first one and, a few passes later, compares. Costs a strided sample (at most
`SAMPLE_SIZE` entries per layer) and two comparisons per model, then nothing.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from .layer import MFTLayer


SAMPLE_SIZE = 256  # entries of P kept per layer and adapter
CHECK_AT = (8, 32)  # training forward passes after the first at which the sample is compared
# A sampled mask that moved less than this over CHECK_AT passes has not learned; one optimizer step at the default
# scale moves a soft mask by ~1e-3.
STILL_MASK_CHANGE = 1e-4


def _sample(scores: torch.Tensor) -> torch.Tensor:
    flat = scores.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // SAMPLE_SIZE)][:SAMPLE_SIZE].to("cpu", torch.float32, copy=True)


class MaskProgressGuard:
    """Warns once if, after the first `CHECK_AT` training forward passes of `model`, its scores have moved but no
    sampled mask has moved by `STILL_MASK_CHANGE`. Call `observe(model)` at each training forward pass."""

    def __init__(self) -> None:
        self.passes = 0
        self.start: Optional[dict[tuple[str, str], torch.Tensor]] = None
        self.done = False

    def observe(self, model: nn.Module) -> None:
        if self.done:
            return
        if self.start is None:
            self.start = {(name, adapter): _sample(scores) for name, adapter, scores, _ in _trained_scores(model)}
            return
        self.passes += 1
        if self.passes not in CHECK_AT:
            return
        largest_mask, largest_score, scale = 0.0, 0.0, 1.0
        for name, adapter, scores, spec in _trained_scores(model):
            before = self.start.get((name, adapter))
            if before is None or before.numel() == 0:  # a new adapter, or a shard that holds nothing here
                continue
            now = _sample(scores)
            largest_score = max(largest_score, float((now - before).abs().max()))
            if spec.mask_type == "soft":
                mask_change = (spec.mask(now) - spec.mask(before)).abs().max()
            else:  # a hard mask changes when the ranking does: the relative change of |P|
                mask_change = (now - before).abs().max() / before.abs().mean().clamp_min(1e-30)
            largest_mask, scale = max(largest_mask, float(mask_change)), spec.score_scale
        if largest_score == 0.0:
            return  # no optimizer step yet (gradient accumulation) or a frozen adapter: nothing to judge
        self.done = True
        if largest_mask >= STILL_MASK_CHANGE:
            return
        per_pass = largest_score / self.passes
        warnings.warn(
            f"MFT: after {self.passes} training forward passes no mask has moved by {STILL_MASK_CHANGE:g} (largest "
            f"change of a sampled mask {largest_mask:.2g}); the scores move by at most {per_pass:.2g} per pass, as "
            f"Adam does at a learning rate of about {per_pass:.2g}. Masks learn at a score step of ~0.1 (soft) or "
            f"~0.01 (hard) per step: with score_scale={scale:g} use a learning rate around {0.1 / scale:.2g} for "
            "soft masks, or keep MFTConfig's default score_scale, at which the default rates of transformers.Trainer "
            "(5e-5) and TRL (2e-5) train masks.",
            UserWarning,
            stacklevel=3,
        )


def _trained_scores(model: nn.Module):
    """(module name, adapter, P, MaskSpec) for every score tensor of `model` that trains."""
    for name, module in model.named_modules():
        if isinstance(module, MFTLayer):
            for adapter, scores in module.mft_scores.items():
                if scores.requires_grad:
                    yield name, adapter, scores, module.mft_mask_spec[adapter]
