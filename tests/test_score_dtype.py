# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Scores are float32 through a model's dtype casts; `autocast_adapter_dtype=False` keeps them in the base dtype."""

import pytest
import torch
from peft import get_peft_model

from peft_mft import MFTConfig

from .conftest import make_llama, text_inputs


def score_params(model):
    return {name: param for name, param in model.named_parameters() if "mft_scores" in name}


@pytest.mark.parametrize("cast", ["to(bfloat16)", "half()", "bfloat16()", "to(cpu, float16)"])
def test_low_precision_casts_keep_float32_scores_and_their_values(cast):
    model = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=0.5))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.mft_scores["default"][0, 0] = 3.005  # bf16 would round it to 3.0
    method, _, argument = cast.partition("(")
    args = {"bfloat16)": (torch.bfloat16,), "cpu, float16)": ("cpu", torch.float16)}.get(argument, ())
    getattr(model, method)(*args)
    assert layer.base_layer.weight.dtype in (torch.bfloat16, torch.float16)
    assert {p.dtype for p in score_params(model).values()} == {torch.float32}
    assert layer.mft_scores["default"][0, 0].item() == torch.tensor(3.005, dtype=torch.float32).item()
    assert model(text_inputs()).logits.dtype == layer.base_layer.weight.dtype


def test_casts_to_float64_apply_to_scores():
    model = get_peft_model(make_llama(), MFTConfig()).to(torch.float64)
    assert {p.dtype for p in score_params(model).values()} == {torch.float64}


def test_a_cast_moves_existing_score_gradients_with_the_scores():
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    inputs = text_inputs()
    model(input_ids=inputs, labels=inputs).loss.backward()
    model.to(torch.bfloat16)
    assert all(p.grad.dtype == torch.float32 for p in score_params(model).values())


@pytest.mark.parametrize("base_dtype", [torch.bfloat16, torch.float16])
def test_autocast_adapter_dtype_false_keeps_scores_in_the_base_dtype_with_a_warning(base_dtype):
    # PEFT's own contract (tests/test_custom_models.py::test_adapter_dtype_autocast for every tuner).
    with pytest.warns(UserWarning, match="cannot hold small updates"):
        model = get_peft_model(make_llama().to(base_dtype), MFTConfig(), autocast_adapter_dtype=False)
    assert {p.dtype for p in score_params(model).values()} == {base_dtype}
    inputs = text_inputs()
    model(input_ids=inputs, labels=inputs).loss.backward()
    assert all(p.grad is not None and p.grad.dtype == base_dtype for p in score_params(model).values())
    default = get_peft_model(make_llama().to(base_dtype), MFTConfig())
    assert {p.dtype for p in score_params(default).values()} == {torch.float32}


def test_autocast_adapter_dtype_false_on_a_float32_base_changes_nothing_and_does_not_warn(recwarn):
    model = get_peft_model(make_llama(), MFTConfig(), autocast_adapter_dtype=False)
    assert {p.dtype for p in score_params(model).values()} == {torch.float32}
    assert not [w for w in recwarn if "cannot hold small updates" in str(w.message)]


def _trl_cast(model):
    """What TRL's SFTTrainer does to a quantized model's trainable parameters."""
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)


@pytest.mark.parametrize("mask_type", ["soft", "hard"])
def test_restore_float32_scores_gives_a_fresh_adapter_its_exact_initial_scores(mask_type):
    from peft_mft.training.callbacks import restore_float32_scores

    soft = dict(init_score=3.0, temperature=0.5) if mask_type == "soft" else dict(sparsity=0.1)
    model = get_peft_model(make_llama(), MFTConfig(mask_type=mask_type, **soft))
    initial = {n: p.detach().clone() for n, p in score_params(model).items()}
    _trl_cast(model)
    if mask_type == "hard":  # |W| / mean |W| is not a bf16 number: the cast really lost digits
        assert any(not torch.equal(p.float(), initial[n]) for n, p in score_params(model).items())
    assert restore_float32_scores(model) == []
    assert all(torch.equal(p, initial[n]) and p.dtype == torch.float32 for n, p in score_params(model).items())


def test_trained_scores_are_widened_and_named_and_base_dtype_scores_left_alone():
    from peft_mft.training.callbacks import restore_float32_scores

    model = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=0.5, init_weights=False))
    _trl_cast(model)
    widened = restore_float32_scores(model)
    assert len(widened) == len(score_params(model)) and widened[0].startswith("default: ")
    assert {p.dtype for p in score_params(model).values()} == {torch.float32}
    chosen = get_peft_model(make_llama().to(torch.bfloat16), MFTConfig(init_score=3.0, temperature=0.5),
                            autocast_adapter_dtype=False)
    assert restore_float32_scores(chosen) == []
    assert {p.dtype for p in score_params(chosen).values()} == {torch.bfloat16}


@pytest.mark.parametrize("mask_type", ["soft", "hard"])
def test_a_forward_after_a_trainer_cast_restores_the_exact_float32_scores_without_a_callback(mask_type):
    """The drop-in path: a trainer casts trainable parameters to bf16 through `param.data` (as TRL does on a quantized
    base) and nobody added Float32ScoresCallback; the first forward gives the scores their float32 values back."""
    soft = dict(init_score=3.0, temperature=0.5) if mask_type == "soft" else dict(sparsity=0.1)
    model = get_peft_model(make_llama(), MFTConfig(mask_type=mask_type, **soft))
    inputs = text_inputs()
    with torch.no_grad():
        expected = model(input_ids=inputs).logits
    initial = {n: p.detach().clone() for n, p in score_params(model).items()}
    _trl_cast(model)
    with torch.no_grad():
        logits = model(input_ids=inputs).logits
    assert all(torch.equal(p, initial[n]) and p.dtype == torch.float32 for n, p in score_params(model).items())
    assert torch.equal(logits, expected)


def test_trained_scores_cast_by_a_trainer_are_widened_with_a_warning():
    model = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=0.5, init_weights=False))
    _trl_cast(model)
    with pytest.warns(UserWarning, match="keep the 16-bit rounding"), torch.no_grad():
        model(input_ids=text_inputs())
    assert {p.dtype for p in score_params(model).values()} == {torch.float32}


def test_a_device_move_keeps_scores_that_follow_a_16_bit_base_in_its_dtype():
    chosen = get_peft_model(make_llama().to(torch.bfloat16), MFTConfig(init_score=3.0, temperature=0.5),
                            autocast_adapter_dtype=False)
    chosen.to("cpu")
    assert {p.dtype for p in score_params(chosen).values()} == {torch.bfloat16}
    chosen.to(torch.float32)  # a cast up applies to them as to the base
    assert {p.dtype for p in score_params(chosen).values()} == {torch.float32}
