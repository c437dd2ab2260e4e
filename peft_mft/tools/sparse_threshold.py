# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The `soft-sparse` threshold for a logit-drift budget, by bisection on a calibration batch.

A soft mask that moved less than the threshold from its initial value is stored as exactly initial
(`peft_mft.tools.export`, format "soft-sparse"). The larger the threshold, the smaller the folder and the further its
model drifts from the float32 adapter. `choose_sparse_threshold` finds the largest threshold whose drift, the largest
|logit change| over a calibration batch against the float32 adapter, stays within the budget: bisection on a
logarithmic scale, each step encoding and decoding the masks exactly as the format does and running the batch.
The drift need not be monotone in the threshold; the bisection keeps the largest threshold it measured within the
budget, so the reported drift is always a measured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import PeftModel

from ..layer import MFTLayer
from .export import decode_mask, encode_mask, initial_mask, scores_for_mask


# The calibration batch when the caller has none (`peft-mft export --max-drift`, benchmarks/sparse_sizes.py): random
# token ids, text only, seeded so that the chosen threshold is reproducible.
CALIBRATION_SHAPE = (4, 64)
CALIBRATION_DESCRIPTION = f"{CALIBRATION_SHAPE[0]} x {CALIBRATION_SHAPE[1]} random token ids (seed 0, text only)"


def random_calibration_inputs(model) -> dict:
    """`CALIBRATION_SHAPE` random token ids over `model`'s (text) vocabulary, with their attention mask."""
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, CALIBRATION_SHAPE, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@dataclass
class SparseThreshold:
    """The chosen threshold, its measured drift (largest |logit change|) and share of masks kept, and every
    (threshold, drift) the bisection measured."""

    threshold: float
    drift: float
    kept_share: float
    measured: list[tuple[float, float]] = field(default_factory=list)


def _sparse_masks(masks: list[torch.Tensor], spec, mask_init: float, threshold: float) -> tuple[list, int]:
    """Each of the float32 adapter's `masks` as the soft-sparse format stores it at `threshold`, and how many masks
    it keeps."""
    out, kept = [], 0
    for mask in masks:
        encoded = encode_mask(mask, spec, mask_init, "soft-sparse", "m", threshold)
        kept += encoded["m.kept_columns"].numel()
        out.append(decode_mask(encoded, mask_init, "soft-sparse", "m", tuple(mask.shape)))
    return out, kept


@torch.no_grad()
def choose_sparse_threshold(
    model: PeftModel, inputs: dict, max_drift: float, adapter: str = "default", steps: int = 12
) -> SparseThreshold:
    """The largest threshold whose soft-sparse masks change no logit of `model(**inputs)` by more than `max_drift`
    (see the module docstring). `model`: a PeftModel with the float32 soft-mask adapter `adapter`; its scores are
    restored before returning."""
    if not max_drift > 0:
        raise ValueError(f"max_drift must be > 0 (a largest |logit change|), got {max_drift!r}.")
    config = model.peft_config[adapter]
    if config.mask_type != "soft":
        raise ValueError(f"soft-sparse stores soft masks; adapter {adapter!r} has {config.mask_type} masks.")
    layers = [m for m in model.modules() if isinstance(m, MFTLayer) and adapter in m.mft_scores]
    spec = layers[0].mft_mask_spec[adapter]
    mask_init = initial_mask(config, spec)
    model.eval()
    reference = model(**inputs).logits.float()
    originals = [layer.mft_scores[adapter].detach().clone() for layer in layers]
    float32_masks = [layer.get_mask(adapter).cpu() for layer in layers]  # every threshold starts from these
    total = sum(o.numel() for o in originals)
    measured: list[tuple[float, float]] = []

    def drift_at(threshold: float) -> tuple[float, int]:
        masks, kept = _sparse_masks(float32_masks, spec, mask_init, threshold)
        for layer, mask in zip(layers, masks):
            scores = layer.mft_scores[adapter]
            scores.copy_(scores_for_mask(mask, spec).to(scores.device))
        drift = float((model(**inputs).logits.float() - reference).abs().max())
        measured.append((threshold, drift))
        return drift, kept

    try:
        largest = max(float((mask - mask_init).abs().max()) for mask in float32_masks)
        drift, kept = drift_at(largest)  # every mask stored as initial: the base model's drift
        if drift <= max_drift:
            return SparseThreshold(largest, drift, kept / total, measured)
        low, high = largest * 1e-6, largest
        drift, kept = drift_at(low)
        if drift > max_drift:  # even keeping nearly every moved mask drifts too far: keep them all
            drift, kept = drift_at(0.0)
            return SparseThreshold(0.0, drift, kept / total, measured)
        best = (low, drift, kept)
        for _ in range(steps):
            middle = (low * high) ** 0.5
            drift, kept = drift_at(middle)
            if drift <= max_drift:
                low, best = middle, (middle, drift, kept)
            else:
                high = middle
        return SparseThreshold(best[0], best[1], best[2] / total, measured)
    finally:
        for layer, original in zip(layers, originals):
            layer.mft_scores[adapter].copy_(original)
