# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""examples.hmft_probe on a tiny LLaVA: each variant's weights are W * f(M), the plain `soft` variant answers as the
adapter does, the hard levels zero their exact share, and a second run skips what is recorded."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import LlavaForConditionalGeneration

import examples.hmft_probe as probe
from harness.data import load_llava_json
from harness.evaluation import evaluate_vqa
from harness.models import load_llava
from peft_mft import MFTConfig

from .tiny import make_dataset, save_tiny_llava


pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data")
    model_folder = save_tiny_llava(tmp_path / "model")
    base = LlavaForConditionalGeneration.from_pretrained(model_folder)
    torch.manual_seed(0)  # random scores around init 3, T 0.5: a spread of masks, some below 0.1
    adapter = get_peft_model(base, MFTConfig(init_score=3.0, temperature=0.5, init_weights=False, score_scale=1.0))
    adapter.save_pretrained(tmp_path / "adapter")
    monkeypatch.setattr(probe, "embedded_llava_checkpoint", lambda: model_folder)
    monkeypatch.setattr(probe, "prepare_easy_vqa", lambda: {"test": data["test"], "image_folder": tmp_path / "data"})
    monkeypatch.setattr(probe, "PROBE_FILE", tmp_path / "probe.jsonl")
    return {"model": model_folder, "adapter": tmp_path / "adapter", "data": data, "root": tmp_path}


def test_variants_evaluate_w_times_f_of_m_and_resume(tiny):
    argv = ["--adapter", str(tiny["adapter"]), "--source-key", "run-1"]
    results = {r["variant"]: r for r in probe.main(argv)}
    assert set(results) == set(probe.variants())
    # the plain variant is the adapter itself
    loaded = load_llava(str(tiny["model"]))
    records = load_llava_json(tiny["data"]["test"], tiny["root"] / "data")
    with_adapter = PeftModel.from_pretrained(loaded.model, tiny["adapter"])
    reference = evaluate_vqa(with_adapter, loaded.processor(), records, batch_size=32)
    assert results["soft"]["accuracy"] == reference["accuracy"] and results["soft"]["zeroed_share"] == 0.0
    soft, _, _ = probe.masked_base_model(str(tiny["model"]), probe.AdapterMasks.from_folder(tiny["adapter"]),
                                      probe.variants()["soft"])
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(soft(input_ids=ids).logits, with_adapter(input_ids=ids).logits)
    for level in probe.HARD_LEVELS:
        assert results[f"hard {100 * level:.4g}%"]["zeroed_share"] <= level
    masks = probe.AdapterMasks.from_folder(tiny["adapter"])
    below = sum(int((m < probe.NEAR_ZERO).sum()) for _, m in masks) / sum(m.numel() for _, m in masks)
    assert below > 0 and results["binary at 0.1"]["zeroed_share"] == below
    assert results["soft, near-zero back to 1"]["zeroed_share"] == 0.0
    # the weights of a variant are W * f(M)
    model, _, _ = probe.masked_base_model(str(tiny["model"]), masks, lambda m: (m >= 0.1).to(m.dtype))
    name, mask = next(iter(masks))
    original = LlavaForConditionalGeneration.from_pretrained(tiny["model"]).get_submodule(name).weight
    assert torch.equal(model.get_submodule(name).weight, original * (mask >= 0.1).to(original.dtype))
    # a second run finds everything recorded
    assert probe.main(argv) == []
    assert len(tiny["root"].joinpath("probe.jsonl").read_text().splitlines()) == len(results)
    assert all(json.loads(line)["source_key"] == "run-1" for line in tiny["root"].joinpath("probe.jsonl").open())
