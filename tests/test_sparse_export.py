# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The soft-sparse format: only the masks that moved, a threshold from a logit-drift budget, loading back."""

import json

import pytest
import torch
from peft import get_peft_model

from peft_mft import MFTConfig
from peft_mft.layer import MFTLayer
from peft_mft.tools.export import (
    COMPACT_META_NAME,
    COMPACT_WEIGHTS_NAME,
    export_compact_adapter,
    load_compact_adapter,
    read_compact_masks,
)
from peft_mft.tools.sparse_threshold import choose_sparse_threshold
from peft_mft_cli import main as cli

from .conftest import make_llama, text_inputs


@pytest.fixture
def trained(tmp_path):
    """A soft adapter whose masks moved by different amounts (random scores around init 3, T 0.5), saved, and its
    base model saved as a folder."""
    torch.manual_seed(0)
    model = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=0.5, init_weights=False)).eval()
    model.save_pretrained(tmp_path / "adapter")
    make_llama().save_pretrained(tmp_path / "base")
    return model, tmp_path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _masks(model):
    return {name.removeprefix("base_model.model."): m.get_mask("default")
            for name, m in model.named_modules() if isinstance(m, MFTLayer)}


def test_kept_masks_are_decoded_as_stored_and_every_other_one_is_exactly_initial(trained):
    model, tmp_path = trained
    threshold = 0.05
    result = export_compact_adapter(tmp_path / "adapter", tmp_path / "sparse", "soft-sparse", threshold=threshold)
    _, meta, decoded, _ = read_compact_masks(tmp_path / "sparse")
    kept = total = 0
    for name, mask in _masks(model).items():
        loaded = decoded[f"base_model.model.{name}"]
        moved = (mask - 1.0).abs() > threshold  # normalised soft masks start at exactly 1
        assert torch.equal(loaded[~moved], torch.ones_like(loaded[~moved]))
        assert torch.equal(loaded[moved], (mask[moved] - 1.0).half().float() + 1.0)  # float16 deviations
        kept, total = kept + int(moved.sum()), total + mask.numel()
    assert 0 < kept < total and meta["kept_share"] == kept / total and meta["threshold"] == threshold
    assert result.bytes_on_disk < 4 * total  # smaller than the float32 scores
    card = (tmp_path / "sparse" / "README.md").read_text()
    assert "soft-sparse" in card and f"{threshold:.4g}" in card and "load_compact_adapter" in card


def test_the_chosen_threshold_keeps_the_drift_within_budget_and_loads_and_merges(trained):
    model, tmp_path = trained
    ids = text_inputs(batch=4, length=16)
    budget = 0.005
    choice = choose_sparse_threshold(model, {"input_ids": ids}, max_drift=budget)
    assert 0 < choice.threshold and 0 < choice.kept_share < 1 and choice.drift <= budget
    assert len(choice.measured) > 3
    export_compact_adapter(tmp_path / "adapter", tmp_path / "sparse", "soft-sparse", threshold=choice.threshold)
    loaded = load_compact_adapter(make_llama(), tmp_path / "sparse")
    reference = _logits(model, ids)
    drift = float((_logits(loaded, ids) - reference).abs().max())
    assert drift <= budget * 1.01 + 1e-6  # the loader's scores reproduce the masks to float32 rounding
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(_logits(merged, ids), _logits(loaded, ids), atol=1e-5, rtol=1e-5)
    # a tighter budget keeps more masks
    tighter = choose_sparse_threshold(model, {"input_ids": ids}, max_drift=budget / 10)
    assert tighter.threshold < choice.threshold and tighter.kept_share > choice.kept_share


def test_choosing_leaves_the_adapter_unchanged(trained):
    model, _ = trained
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "mft_scores" in n}
    choose_sparse_threshold(model, {"input_ids": text_inputs()}, max_drift=0.01)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_cli_writes_the_budget_and_the_measured_drift(trained, capsys):
    _, tmp_path = trained
    out = tmp_path / "cli-sparse"
    assert cli(["export", str(tmp_path / "adapter"), str(out), "--format", "sparse", "--max-drift", "0.005",
                "--base", str(tmp_path / "base")]) == 0
    meta = json.loads((out / COMPACT_META_NAME).read_text())
    assert meta["format"] == "soft-sparse" and meta["drift"]["budget"] == 0.005
    assert 0 <= meta["drift"]["measured"] <= 0.005 and "random token ids" in meta["drift"]["calibration"]
    assert (out / COMPACT_WEIGHTS_NAME).is_file() and "logit drift" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --min-change X or --max-drift X"),
    (["--min-change", "0.1", "--max-drift", "0.1"], "exactly one of"),
    (["--max-drift", "0.1"], "give its folder with --base"),
    (["--min-change", "-1"], "needs a threshold >= 0"),
])
def test_cli_names_what_is_missing(trained, capsys, args, message):
    _, tmp_path = trained
    assert cli(["export", str(tmp_path / "adapter"), str(tmp_path / "x"), "--format", "sparse", *args]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_threshold_for_another_format_is_refused(trained, capsys):
    _, tmp_path = trained
    argv = ["export", str(tmp_path / "adapter"), str(tmp_path / "x"), "--format", "fp16", "--min-change", "1"]
    assert cli(argv) == 2
    assert "apply to --format sparse only" in capsys.readouterr().err
