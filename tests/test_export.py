# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Compact adapter export: sizes, exact hard masks, bounded soft-mask drift, loading back, errors."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from peft_mft import AdapterFileError, MFTConfig
from peft_mft.layer import MFTLayer
from peft_mft.tools.export import (
    COMPACT_META_NAME,
    COMPACT_WEIGHTS_NAME,
    export_compact_adapter,
    load_compact_adapter,
    pack_bits,
    unpack_bits,
)

from .conftest import llava_inputs, make_llava


def _trained_adapter(tmp_path, mask_type, seed=0):
    """A LLaVA MFT adapter with random (trained-looking) scores, saved; returns (model, folder)."""
    torch.manual_seed(seed)
    config = MFTConfig(mask_type=mask_type, sparsity=0.2 if mask_type == "hard" else None, init_weights=False)
    model = get_peft_model(make_llava(), config).eval()
    folder = tmp_path / f"{mask_type}-fp32"
    model.save_pretrained(folder)
    return model, folder


def _logits(model):
    with torch.no_grad():
        return model(**llava_inputs()).logits


def _masks(model):
    return {name: module.get_mask("default") for name, module in model.named_modules() if isinstance(module, MFTLayer)}


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000])
def test_bit_packing_round_trips(numel):
    keep = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.5
    packed = pack_bits(keep)
    assert packed.dtype == torch.uint8 and packed.numel() == (numel + 7) // 8
    assert torch.equal(unpack_bits(packed, (numel,)), keep)


@pytest.mark.parametrize("fmt", ["hard-bits", "hard-indices"])
def test_compact_hard_adapter_gives_exactly_the_same_forward(tmp_path, fmt):
    model, folder = _trained_adapter(tmp_path, "hard")
    export = export_compact_adapter(folder, tmp_path / fmt, fmt)
    assert export.max_abs_mask_error == 0.0
    loaded = load_compact_adapter(make_llava(), tmp_path / fmt)
    assert torch.equal(_logits(loaded), _logits(model))
    for name, mask in _masks(model).items():
        assert torch.equal(_masks(loaded)[name], mask), name


@pytest.mark.parametrize("fmt", ["soft-fp16", "soft-int8"])
def test_compact_soft_adapter_stays_within_its_stated_mask_error(tmp_path, fmt):
    model, folder = _trained_adapter(tmp_path, "soft")
    export = export_compact_adapter(folder, tmp_path / fmt, fmt)
    meta = json.loads((tmp_path / fmt / COMPACT_META_NAME).read_text())
    assert meta["max_abs_mask_error"] == export.max_abs_mask_error > 0
    loaded = load_compact_adapter(make_llava(), tmp_path / fmt)
    original_masks, loaded_masks = _masks(model), _masks(loaded)
    worst_bound = 0.0
    for name, mask in original_masks.items():
        error = (loaded_masks[name] - mask).abs()
        if fmt == "soft-fp16":  # float16 rounding of M - 1: half a unit in the last place, 2^-11 relative
            bound = 2.0**-11 * (mask - 1).abs() + 2.0**-24
        else:  # half a quantization step of the row
            bound = ((mask.amax(1) - mask.amin(1)) / 255 / 2)[:, None].expand_as(mask)
        assert (error <= bound + 1e-6).all(), name
        worst_bound = max(worst_bound, float(bound.max()))
        assert float(error.max()) <= export.max_abs_mask_error + 1e-7
    assert export.max_abs_mask_error <= worst_bound + 1e-6
    torch.testing.assert_close(_logits(loaded), _logits(model), atol=20 * worst_bound, rtol=0)


def test_compact_adapter_loads_for_inference_only_and_merges(tmp_path):
    model, folder = _trained_adapter(tmp_path, "hard")
    export_compact_adapter(folder, tmp_path / "bits", "hard-bits")
    loaded = load_compact_adapter(make_llava(), tmp_path / "bits")
    assert isinstance(loaded, PeftModel) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    expected = _logits(loaded)
    merged = loaded.merge_and_unload()
    assert (_logits(merged) - expected).abs().max() <= 1e-5


def test_compact_formats_are_smaller_than_scores_and_hard_indices_beat_lora_r8(tmp_path):
    """One 576 x 1536 projection (SmolLM2's down_proj) at the paper's 1% H-MFT sparsity."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.down_proj = nn.Linear(1536, 576, bias=False)

        def forward(self, x):
            return self.down_proj(x)

    sizes = {}
    for mask_type in ("soft", "hard"):
        mft = get_peft_model(Block(), MFTConfig(mask_type=mask_type, target_modules=["down_proj"], init_weights=False))
        mft.save_pretrained(tmp_path / mask_type)
        sizes[mask_type] = (tmp_path / mask_type / "adapter_model.safetensors").stat().st_size
        for fmt in (["soft-fp16", "soft-int8"] if mask_type == "soft" else ["hard-bits", "hard-indices"]):
            sizes[fmt] = export_compact_adapter(tmp_path / mask_type, tmp_path / fmt, fmt).bytes_on_disk
    lora = get_peft_model(Block(), LoraConfig(r=8, target_modules=["down_proj"]))
    lora.save_pretrained(tmp_path / "lora")
    lora_bytes = (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size
    scores = 576 * 1536 * 4
    assert sizes["soft"] >= scores and sizes["hard"] >= scores
    assert sizes["soft-fp16"] < 0.51 * scores and sizes["soft-int8"] < 0.27 * scores
    assert sizes["hard-bits"] < scores / 31
    assert sizes["hard-indices"] < sizes["hard-bits"] and sizes["hard-indices"] < lora_bytes


def test_export_refuses_a_format_of_the_other_mask_type(tmp_path):
    _, folder = _trained_adapter(tmp_path, "soft")
    with pytest.raises(ValueError, match="hard-bits.*soft adapter.*soft-fp16"):
        export_compact_adapter(folder, tmp_path / "out", "hard-bits")
    with pytest.raises(ValueError, match="Unknown compact format 'zip'"):
        export_compact_adapter(folder, tmp_path / "out", "zip")


def test_compact_folder_is_not_mistaken_for_scores(tmp_path):
    _, folder = _trained_adapter(tmp_path, "hard")
    export_compact_adapter(folder, tmp_path / "bits", "hard-bits")
    # refused at once, naming the loader to use (PEFT would find no weights and look for them on the Hub)
    with pytest.raises(AdapterFileError, match=r"compact MFT adapter.*load_compact_adapter"):
        PeftModel.from_pretrained(make_llava(), tmp_path / "bits")
    with pytest.raises(AdapterFileError, match="not a compact MFT adapter"):
        load_compact_adapter(make_llava(), folder)


def test_tampered_hard_mask_with_wrong_zero_count_is_refused(tmp_path):
    _, folder = _trained_adapter(tmp_path, "hard")
    export_compact_adapter(folder, tmp_path / "bits", "hard-bits")
    path = tmp_path / "bits" / COMPACT_WEIGHTS_NAME
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith(".keep_bits"))
    tensors[key] = torch.full_like(tensors[key], 255)
    save_file(tensors, path)
    with pytest.raises(ValueError, match="zeroed entries, but sparsity 0.2"):
        load_compact_adapter(make_llava(), tmp_path / "bits")


def test_interrupted_export_leaves_the_previous_export_intact(tmp_path, monkeypatch):
    import peft_mft.tools.export

    _, folder = _trained_adapter(tmp_path, "hard")
    out = tmp_path / "compact"
    export_compact_adapter(folder, out, "hard-bits")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(peft_mft.tools.export, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export_compact_adapter(folder, out, "hard-indices")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".compact")) == []


def test_merge_of_a_compact_folder_names_load_compact_adapter(tmp_path, capsys):
    from peft_mft_cli import main

    _, folder = _trained_adapter(tmp_path, "hard")
    export_compact_adapter(folder, tmp_path / "bits", "hard-bits")
    make_llava().save_pretrained(tmp_path / "base")
    assert main(["merge", str(tmp_path / "bits"), str(tmp_path / "merged"), "--base", str(tmp_path / "base")]) == 2
    assert "load_compact_adapter" in capsys.readouterr().err and not (tmp_path / "merged").exists()
