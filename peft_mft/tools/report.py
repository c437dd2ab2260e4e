# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Text that describes an adapter, shared by `peft-mft analyze` and the model card: one wording, one set of counts."""

from __future__ import annotations

from ..config import MFTConfig
from .analysis import MaskAnalysis, MaskCounts, format_share


def method_line(config: MFTConfig, markdown: bool = True) -> str:
    """How the adapter's scores become masks, e.g. "soft (S-MFT): `M = sigmoid(S / T)` (paper-literal; 0.954 at the
    start); init_score = 7, T = 2.3". `markdown=False` drops the code quotes (plain terminals, plot titles)."""
    if config.mask_type == "hard":
        line = (
            f"hard (H-MFT): in each weight matrix the {format_share(config.sparsity)} of entries with the smallest "
            f"`|S|` are zeroed (sparsity = {config.sparsity:g}), the rest kept"
        )
    else:
        m0 = config.initial_soft_mask
        if config.normalize_soft_mask:
            formula = (
                f"`M = sigmoid(S / T) / M0` with `M0 = sigmoid(init_score / T) = {m0:.4g}` (exactly 1 at the start)"
            )
        else:
            formula = f"`M = sigmoid(S / T)` (paper-literal; {m0:.4g} at the start)"
        backward = ", straight-through backward (S-MFT STE)" if config.straight_through else ""
        line = f"soft (S-MFT): {formula}; init_score = {config.init_score:g}, T = {config.temperature:g}{backward}"
    return line if markdown else line.replace("`", "")


def projection_rows(analysis: MaskAnalysis) -> list[tuple[str, int, MaskCounts]]:
    """(projection type, masked modules, counts) per projection type in display order, then ("all", ...)."""
    modules = {p: sum(1 for m in analysis.modules if m.projection == p) for p in analysis.by_projection()}
    rows = [(p, modules[p], counts) for p, counts in analysis.by_projection().items()]
    return rows + [("all", len(analysis.modules), analysis.overall)]


PROJECTION_HEADER = ("projection", "modules", "masked weights", "mean mask", "near zero", "M < 0.5")


def projection_cells(analysis: MaskAnalysis) -> list[tuple[str, ...]]:
    """`projection_rows` as table cells under `PROJECTION_HEADER`."""
    return [
        (p, str(n), f"{c.numel:,}", f"{c.mean:.4f}", format_share(c.near_zero_share), format_share(c.below_half_share))
        for p, n, c in projection_rows(analysis)
    ]
