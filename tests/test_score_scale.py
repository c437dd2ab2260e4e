# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Scores trained as P with S = score_offset + score_scale * P: the learning rates of LoRA and full fine-tuning train
masks through a stock `Trainer` / `SFTTrainer`; adapters saved before the scaling load unchanged; weight decay pulls
masks towards their initial value; a rate too small for the masks warns."""

import re
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from peft_mft import MFTConfig, MFTLayer, create_mft_optimizer

from .conftest import _text_config_kwargs, make_llama, text_inputs


LEGACY = Path(__file__).parent / "fixtures" / "legacy-0.1.0"


def logits(model):
    with torch.no_grad():
        return model(text_inputs()).logits


# ---- adapters saved before score_scale existed --------------------------------------------------------------------


@pytest.mark.parametrize("mask_type", ["soft", "hard"])
def test_an_adapter_saved_by_release_0_1_0_loads_to_the_same_logits(tmp_path, mask_type):
    expected = load_file(LEGACY / "logits.safetensors")[mask_type]
    model = PeftModel.from_pretrained(make_llama(), LEGACY / mask_type)
    config = model.peft_config["default"]
    assert (config.score_scale, config.score_offset) == (1.0, 0.0)  # the file holds S itself
    assert torch.equal(logits(model), expected)
    model.save_pretrained(tmp_path / "again")  # now with score_scale written: still the same model
    assert torch.equal(logits(PeftModel.from_pretrained(make_llama(), tmp_path / "again")), expected)


def test_a_fresh_scaled_soft_adapter_is_exactly_the_base_model():
    for scale in (1024.0, 1000.0, 3.0):
        model = get_peft_model(make_llama(), MFTConfig(init_score=7.0, temperature=2.3, score_scale=scale))
        assert torch.equal(logits(model), logits(make_llama())), scale


# ---- the learning rates pipelines already use --------------------------------------------------------------------

SOFT = dict(init_score=3.0, temperature=0.5)
HARD = dict(mask_type="hard", sparsity=0.1)
STEPS = 20


def _batch():
    inputs = text_inputs(batch=8, length=12)
    return inputs, [{"input_ids": row, "labels": row} for row in inputs]


def _loss(model, inputs) -> float:
    with torch.no_grad():
        return model(input_ids=inputs, labels=inputs).loss.item()


def _strong_llama():
    """A tiny Llama with weights of std 0.2, not 0.02: its logits then depend on the masks (near uniform at 0.02)."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**_text_config_kwargs(), initializer_range=0.2))


def _trainer_loss_drop(tmp_path, config: MFTConfig, recipe: bool) -> float:
    """Loss drop of a tiny Llama over `STEPS` steps on one fixed batch through a real `Trainer`: with default
    `TrainingArguments` (AdamW at 5e-5, linear decay), or the explicit recipe (`create_mft_optimizer`)."""
    model = get_peft_model(_strong_llama(), config)
    inputs, dataset = _batch()
    before = _loss(model, inputs)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=STEPS, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    optimizers = (create_mft_optimizer(model), None) if recipe else (None, None)
    Trainer(model=model, args=args, train_dataset=dataset, optimizers=optimizers).train()
    return before - _loss(model.eval(), inputs)


@pytest.mark.parametrize("kwargs", [SOFT, HARD], ids=["soft", "hard"])
def test_default_training_arguments_learn_at_least_half_of_the_recipe(tmp_path, kwargs):
    recipe = _trainer_loss_drop(tmp_path / "recipe", MFTConfig(**kwargs), recipe=True)
    default = _trainer_loss_drop(tmp_path / "default", MFTConfig(**kwargs), recipe=False)
    assert recipe > 0 and default >= 0.5 * recipe, (default, recipe)


@pytest.mark.parametrize("kwargs", [SOFT, HARD], ids=["soft", "hard"])
def test_default_sft_config_learns_at_least_half_of_the_recipe(tmp_path, kwargs):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from .examples.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    texts = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the sea", "fish swim in the river"] * 2
    drops = {}
    for recipe in (True, False):
        args = SFTConfig(output_dir=str(tmp_path / str(recipe)), max_steps=STEPS, per_device_train_batch_size=8,
                         save_strategy="no", report_to="none", use_cpu=True, bf16=False, max_length=32, seed=0)
        model = get_peft_model(_strong_llama(), MFTConfig(task_type="CAUSAL_LM", **kwargs))
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        before = model(**encoded, labels=encoded["input_ids"]).loss.item()
        optimizers = (create_mft_optimizer(model), None) if recipe else (None, None)
        SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                   processing_class=tokenizer, optimizers=optimizers).train()
        model.eval()
        with torch.no_grad():
            drops[recipe] = before - model(**encoded, labels=encoded["input_ids"]).loss.item()
    assert drops[True] > 0 and drops[False] >= 0.5 * drops[True], drops


# ---- weight decay ---------------------------------------------------------------------------------------------------


def _masks(model) -> torch.Tensor:
    return torch.cat([m.get_mask("default").flatten() for m in model.modules() if isinstance(m, MFTLayer)])


@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "unscaled"])
def test_weight_decay_pulls_masks_towards_their_initial_value_only_when_scaled(scaled):
    extra = {} if scaled else dict(score_scale=1.0, score_offset=0.0)
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False, normalize_soft_mask=True, **SOFT, **extra))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5)
    start = (_masks(model) - 1).abs().mean()  # distance from the initial (identity) mask
    for _ in range(20):  # decay alone: zero gradients
        for param in params:
            param.grad = torch.zeros_like(param)
        optimizer.step()
    after = (_masks(model) - 1).abs().mean()
    if scaled:
        assert after < 0.9 * start  # P shrinks towards 0: S towards init_score, M towards 1
    else:
        assert after > start  # S shrinks towards 0: M towards sigmoid(0) / M0, away from 1


# ---- a rate too small for the masks warns ----------------------------------------------------------------------


def _train_silently(config: MFTConfig, lr: float, tmp_path) -> list[warnings.WarningMessage]:
    model = get_peft_model(make_llama(), config)
    _, dataset = _batch()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=12, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=lr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(model=model, args=args, train_dataset=dataset).train()
    return [w for w in caught if "no mask has moved" in str(w.message)]


def test_a_trainer_at_a_rate_too_small_for_the_masks_warns_once_naming_the_rate(tmp_path):
    unscaled = MFTConfig(score_scale=1.0, score_offset=0.0, **SOFT)
    caught = _train_silently(unscaled, 2e-5, tmp_path / "small")
    assert len(caught) == 1
    message = str(caught[0].message)
    # 2e-5 decaying linearly to 0 over 12 steps: Adam's steps average ~1.4e-5 over the first 8
    estimate = float(re.search(r"learning rate of about ([0-9.e-]+)\.", message).group(1))
    assert 1e-5 <= estimate <= 2e-5 and "with score_scale=1 use a learning rate around 0.1" in message
    assert _train_silently(MFTConfig(**SOFT), 2e-5, tmp_path / "default") == []
