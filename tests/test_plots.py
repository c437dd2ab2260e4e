# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Mask plots: each is drawn from the analysis' numbers, labelled, and written as a non-empty PNG."""

import pytest
from peft import get_peft_model

from peft_mft import MFTConfig
from peft_mft.tools.analysis import analyze_masks

from .conftest import make_llava
from .hand_masks import TOTAL_NUMEL, hand_masked_llama


pytest.importorskip("matplotlib")

from peft_mft.tools.plots import (  # noqa: E402  (needs matplotlib)
    plot_layer_heatmap,
    plot_mask_histogram,
    plot_near_zero_by_projection,
    save_mask_plots,
)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def analysis():
    return analyze_masks(hand_masked_llama(), bins=4)


def test_bar_chart_shows_the_near_zero_share_per_projection(analysis):
    ax = plot_near_zero_by_projection(analysis)
    assert [label.get_text() for label in ax.get_xticklabels()] == ["q", "k", "v", "o", "gate", "up", "down"]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights[0] == pytest.approx(100 * 4 / 512) and heights[-1] == pytest.approx(100 * 2 / 1024)
    assert "M < 0.1" in ax.get_title() and "(%)" in ax.get_ylabel()


def test_histogram_bars_are_the_analysis_counts(analysis):
    ax = plot_mask_histogram(analysis)
    assert [bar.get_height() for bar in ax.patches] == [6, 3, 5, TOTAL_NUMEL - 14]
    assert ax.get_yscale() == "log" and "count" in ax.get_ylabel() and ax.get_xlabel() == "mask value M"


def test_heatmap_has_a_cell_per_layer_and_projection(analysis):
    ax = plot_layer_heatmap(analysis)
    grid = ax.images[0].get_array()
    assert grid.shape == (2, 7)
    assert grid[0, 0] == pytest.approx(100 * 3 / 256) and grid[1, 6] == pytest.approx(100 * 2 / 512)
    assert ax.get_ylabel() == "decoder layer" and "(%)" in ax.images[0].colorbar.ax.get_ylabel()


def test_heatmap_names_the_projector_of_a_vlm():
    ax = plot_layer_heatmap(analyze_masks(get_peft_model(make_llava(), MFTConfig())))
    assert "projector: 0%" in ax.get_title()
    assert ax.images[0].get_array().shape == (2, 7)


def test_save_mask_plots_writes_a_png(analysis, tmp_path):
    path = save_mask_plots(analysis, tmp_path / "masks.png", title="hand-set masks")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
    for plot in (plot_near_zero_by_projection, plot_mask_histogram, plot_layer_heatmap):
        single = tmp_path / f"{plot.__name__}.png"
        plot(analysis).figure.savefig(single)
        assert single.read_bytes()[:8] == PNG_SIGNATURE and single.stat().st_size > 5_000


def test_unmoved_masks_say_so_and_keep_a_scale_from_zero():
    """A fresh adapter has no near-zero mask: the plots say so in words, and the heat map's colour scale starts at
    0 % instead of collapsing to -0.1..0.1."""
    fresh = analyze_masks(get_peft_model(make_llava(), MFTConfig()))
    bars, heat = plot_near_zero_by_projection(fresh), plot_layer_heatmap(fresh)
    for ax in (bars, heat):
        assert any("no mask below M = 0.1" in text.get_text() for text in ax.texts)
    assert heat.images[0].get_clim() == (0.0, 1.0)
    moved = plot_layer_heatmap(analyze_masks(hand_masked_llama(), bins=4))
    assert not any("no mask below" in text.get_text() for text in moved.texts)
    assert moved.images[0].get_clim()[0] == 0.0
