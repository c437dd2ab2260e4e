# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`merged_weights`: the merged model's weights for RL weight sync (TRL + vLLM), also on quantized bases, with the
model left untouched."""

import pytest
import torch
from peft import get_peft_model

import peft_mft
from peft_mft import MFTConfig, merged_weights
from peft_mft.errors import QuantizedMergeError
from tests.conftest import make_llama, text_inputs


bnb = pytest.importorskip("bitsandbytes")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _scored(model):
    return get_peft_model(model, MFTConfig(init_score=3.0, temperature=0.5, init_weights=False,
                                           modules_to_save=["lm_head"]))


def _sync_into(engine, model):
    """TRL's sync loop, with a plain transformers model standing in for the vLLM engine."""
    engine.load_state_dict(dict(merged_weights(model)), strict=True)
    return engine


def test_full_precision_matches_merge_and_unload_names_and_values():
    model = _scored(make_llama())
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)  # a trained copy differs
    synced = dict(merged_weights(model))
    merged = model.merge_and_unload()
    expected = dict(merged.named_parameters())
    assert list(synced) == list(expected)
    assert all(torch.equal(synced[name], expected[name]) for name in expected)


def _quantized_llama():
    """make_llama with its decoder projections in bitsandbytes NF4 (compute in float32), as a QLoRA-style load."""
    model = make_llama()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name.endswith("_proj"):
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                          compute_dtype=torch.float32, quant_type="nf4")
                layer.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False, quant_type="nf4")
                setattr(module, child_name, layer.to("cpu"))
    return model


def test_on_a_4bit_base_the_synced_engine_computes_what_the_masked_model_does():
    model = _scored(_quantized_llama())
    ids = text_inputs()
    packed = {n: p.detach().clone() for n, p in model.named_parameters() if type(p).__name__ == "Params4bit"}
    with pytest.raises(QuantizedMergeError, match="merged_weights"):
        model.merge_adapter()  # the refusal names this route
    engine = _sync_into(make_llama(seed=1), model)
    torch.testing.assert_close(_logits(engine, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in packed.items())  # the quantized base is untouched
    assert not any(getattr(m, "merged", False) for m in model.modules())
    assert all(t.dtype == torch.float32 for _, t in merged_weights(model))


def test_dtype_and_nonfinite_scores():
    model = _scored(make_llama())
    assert {t.dtype for _, t in merged_weights(model, dtype=torch.bfloat16)} == {torch.bfloat16}
    scores = next(p for n, p in model.named_parameters() if "mft_scores" in n)
    with torch.no_grad():
        scores[0, 0] = float("nan")
    with pytest.raises(peft_mft.NonFiniteScoresError):
        next(merged_weights(model))


def test_on_a_merged_model_each_mask_is_applied_once():
    model = _scored(make_llama())
    expected = dict(merged_weights(model))
    model.merge_adapter()
    again = dict(merged_weights(model))
    assert list(again) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=1e-6, msg=name)
