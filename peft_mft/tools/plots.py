# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Plots of an adapter's mask statistics (matplotlib, the `plots` extra): the paper's Fig. 6 view (near-zero share per
projection type), the mask histogram and a layer x projection heat map.

Each `plot_*` function draws into a given matplotlib `Axes` (or a new figure) and returns the `Axes`;
`save_mask_plots` writes all three side by side to one PNG. No pyplot state is used, so this works without a display.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

from .analysis import MaskAnalysis, format_share


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("peft_mft.tools.plots needs matplotlib: pip install 'peft-mft[plots]'.") from exc
    return Figure


def _new_axes(ax, size=(5.0, 4.0)):
    if ax is not None:
        return ax
    return _figure_class()(figsize=size, layout="constrained").add_subplot()


def _say_none_is_near_zero(analysis: MaskAnalysis, ax) -> None:
    """The empty state: a note across `ax` when no mask is below the near-zero threshold (an untrained or barely
    trained adapter), so that an all-zero plot reads as a finding, not as a broken figure."""
    if analysis.overall.near_zero == 0:
        ax.text(0.5, 0.5, f"no mask below M = {analysis.near_zero_threshold:g}\n(the masks have not moved this far)",
                transform=ax.transAxes, ha="center", va="center", fontsize=9,
                bbox={"facecolor": "white", "edgecolor": "gray", "alpha": 0.9})


def plot_near_zero_by_projection(analysis: MaskAnalysis, ax=None):
    """Bar chart of the near-zero share (%) of the masked weights of each projection type (the paper's Fig. 6)."""
    ax = _new_axes(ax)
    groups = analysis.by_projection()
    names = list(groups)
    shares = [100 * counts.near_zero_share for counts in groups.values()]
    bars = ax.bar(names, shares, color="tab:blue")
    ax.bar_label(bars, labels=[format_share(counts.near_zero_share) for counts in groups.values()], fontsize=8)
    threshold = f"{analysis.near_zero_threshold:g}"
    ax.set_title(f"Near-zero masks (M < {threshold}) per projection type")
    ax.set_xlabel("projection type")
    ax.set_ylabel(f"share of masked weights with M < {threshold} (%)")
    ax.set_ylim(0, max(shares + [0.0]) * 1.2 or 1.0)
    _say_none_is_near_zero(analysis, ax)
    return ax


def plot_mask_histogram(analysis: MaskAnalysis, ax=None):
    """Histogram of all mask values (count per bin, log scale), with the near-zero threshold marked."""
    ax = _new_axes(ax)
    edges, counts = analysis.histogram_edges, analysis.histogram_counts
    widths = [right - left for left, right in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="tab:gray", edgecolor="black", linewidth=0.3)
    if any(counts):
        ax.set_yscale("log")
    threshold = analysis.near_zero_threshold
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"near-zero threshold M = {threshold:g}")
    ax.legend(loc="upper center", fontsize=8)
    ax.set_title(f"Mask values ({analysis.overall.numel:,} masked weights)")
    ax.set_xlabel("mask value M")
    ax.set_ylabel("masked weights per bin (count, log scale)")
    ax.set_xlim(edges[0], edges[-1])
    return ax


def plot_layer_heatmap(analysis: MaskAnalysis, ax=None):
    """Heat map of the near-zero share (%) per decoder layer (rows) and projection type (columns).

    Modules outside numbered layers (the projector) have no row; their share is given in the title.
    """
    import numpy as np

    ax = _new_axes(ax, size=(5.0, 5.0))
    cells = {key: counts for key, counts in analysis.by_layer().items() if key[0] is not None}
    layers = sorted({layer for layer, _ in cells})
    projections = list(dict.fromkeys(projection for _, projection in cells))
    grid = np.full((max(len(layers), 1), max(len(projections), 1)), np.nan)
    for (layer, projection), counts in cells.items():
        grid[layers.index(layer), projections.index(projection)] = 100 * counts.near_zero_share
    # The colour scale starts at 0 % and never collapses to a point (all shares 0 would give a -0.1..0.1 scale).
    top = np.nanmax(grid) if np.isfinite(grid).any() and np.nanmax(grid) > 0 else 1.0
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0,
                      vmax=top)
    colorbar = ax.figure.colorbar(image, ax=ax)
    threshold = f"{analysis.near_zero_threshold:g}"
    colorbar.set_label(f"share with M < {threshold} (%)")
    if grid.size <= 200:
        bright = np.nanmax(grid) * 0.6 if np.isfinite(grid).any() else 0.0
        for (row, column), value in np.ndenumerate(grid):
            if not math.isnan(value):
                color = "black" if value > bright else "white"  # readable on viridis' yellow and purple ends
                ax.text(column, row, f"{value:.2g}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(projections)), projections)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("projection type")
    ax.set_ylabel("decoder layer")
    title = f"Near-zero masks (M < {threshold}) per layer"
    projector = analysis.by_projection().get("projector")
    if projector is not None:
        title += f"\nprojector: {format_share(projector.near_zero_share)}"
    ax.set_title(title)
    _say_none_is_near_zero(analysis, ax)
    return ax


def save_mask_plots(analysis: MaskAnalysis, path: Union[str, os.PathLike], title: Optional[str] = None,
                    metadata: Optional[dict[str, str]] = None) -> Path:
    """Write the three plots side by side to `path` (PNG, 150 dpi); `title` goes above them, `metadata` into the PNG's
    text chunks (`peft_mft.tools.output_file.png_metadata`). Returns the path."""
    figure = _figure_class()(figsize=(17.0, 5.0), layout="constrained")
    bar_ax, hist_ax, heat_ax = figure.subplots(1, 3, width_ratios=(1.0, 1.0, 1.1))
    plot_near_zero_by_projection(analysis, bar_ax)
    plot_mask_histogram(analysis, hist_ax)
    plot_layer_heatmap(analysis, heat_ax)
    if title:
        figure.suptitle(title)
    path = Path(path)
    figure.savefig(path, dpi=150, format="png", metadata=metadata)
    return path
