# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Soft-mask presets chosen from the base model when the user gives no (init_score, temperature)."""

import json
import logging

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_mft import MFTConfig
from peft_mft.config import FALLBACK_PRESET, MFT_PRESETS, preset_for_model
from tests.conftest import make_llama, make_llava, make_qwen2


def _first_scores(model) -> torch.Tensor:
    return next(p for n, p in model.named_parameters() if "mft_scores" in n)


def _first_effective_scores(model) -> torch.Tensor:
    """S = score_offset + score_scale * P of the first masked layer."""
    config = model.peft_config["default"]
    return config.score_offset + config.score_scale * _first_scores(model).detach()


@pytest.mark.parametrize(
    "model_config, expected",
    [
        ({"_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct", "model_type": "qwen2"}, "qwen2.5-0.5b"),
        ({"_name_or_path": "/data/ckpt/TinyLlama-1.1B-Chat-v1.0", "model_type": "llama"}, "tinyllama-1.1b"),
        ({"_name_or_path": "HuggingFaceTB/SmolLM2-360M-Instruct", "model_type": "llama"}, FALLBACK_PRESET),
        ({"_name_or_path": "", "model_type": "gemma"}, "gemma-2b"),
        # a VLM: its language model decides
        ({"_name_or_path": "llava-hf/llava-1.5-7b-hf", "model_type": "llava",
          "text_config": {"model_type": "qwen2"}}, "qwen2.5-0.5b"),
        ({"_name_or_path": "", "model_type": "llava", "text_config": {"model_type": "llama"}}, FALLBACK_PRESET),
        ({"model_type": "mistral"}, FALLBACK_PRESET),
    ],
)
def test_preset_follows_the_model_name_then_its_type(model_config, expected):
    assert preset_for_model(model_config)[0] == expected


def test_an_unset_soft_mask_takes_the_models_preset_and_records_it(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="peft_mft.model"):
        model = get_peft_model(make_qwen2(), MFTConfig())
    config = model.peft_config["default"]
    assert (config.preset, config.init_score, config.temperature) == ("qwen2.5-0.5b", 7.0, 2.3)
    assert "qwen2.5-0.5b" in caplog.text and "model type 'qwen2'" in caplog.text
    assert torch.all(_first_effective_scores(model) == 7.0)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["preset"], saved["init_score"], saved["temperature"]) == ("qwen2.5-0.5b", 7.0, 2.3)
    reloaded = PeftModel.from_pretrained(make_qwen2(), tmp_path)
    assert torch.equal(_first_scores(reloaded), _first_scores(model))


def test_a_model_matching_no_family_gets_the_fallback():
    model = get_peft_model(make_llava(), MFTConfig())
    config = model.peft_config["default"]
    assert config.preset == FALLBACK_PRESET
    assert (config.init_score, config.temperature) == MFT_PRESETS[FALLBACK_PRESET] == (3.0, 0.5)


def test_the_fallback_is_a_preset_of_the_paper_and_the_old_smollm2_name_keeps_its_values():
    assert FALLBACK_PRESET == "tinyllama-1.1b" and "smollm2" not in MFT_PRESETS
    old = MFTConfig(preset="smollm2")  # as configs saved by 0.2.0 and earlier may hold it
    assert (old.preset, old.init_score, old.temperature) == ("tinyllama-1.1b", 3.0, 0.5)
    assert MFTConfig.from_preset("smollm2").preset == "tinyllama-1.1b"


def test_explicit_values_win_and_a_missing_one_comes_from_the_preset():
    model = get_peft_model(make_qwen2(), MFTConfig(init_score=4.0))
    config = model.peft_config["default"]
    assert (config.init_score, config.temperature) == (4.0, 2.3)
    assert torch.all(_first_effective_scores(model) == 4.0)
    config = get_peft_model(make_qwen2(), MFTConfig(init_score=4.0, temperature=1.0)).peft_config["default"]
    assert (config.init_score, config.temperature) == (4.0, 1.0)


def test_a_named_preset_resolves_at_once_and_an_unknown_one_is_refused():
    config = MFTConfig(preset="gemma-2b")
    assert (config.init_score, config.temperature) == (5.0, 1.3)
    assert get_peft_model(make_qwen2(), config).peft_config["default"].preset == "gemma-2b"  # not the model's
    with pytest.raises(ValueError, match="preset must be one of"):
        MFTConfig(preset="llama-7b")


def test_an_unresolved_config_says_where_its_values_come_from():
    with pytest.raises(ValueError, match="come from a preset when the adapter is created"):
        MFTConfig().mask_spec()


def test_hard_masks_need_no_preset():
    config = get_peft_model(make_llama(), MFTConfig(mask_type="hard", sparsity=0.1)).peft_config["default"]
    assert config.preset is None and config.init_score is None
