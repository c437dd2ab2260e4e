# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Every `targets` variant masks exactly the intended projections on every architecture MFT knows by name."""

import re
import warnings

import pytest
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from peft_mft import MFTConfig, MFTLayer

from .conftest import IMAGE_TOKEN_ID


TINY = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
LLAMA_LIKE = ({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
              {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
# (attention projections, MLP projections) of each decoder layer, read from transformers' modelling code.
EXPECTED = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE,
    "gemma": LLAMA_LIKE,
    "gemma2": LLAMA_LIKE,
    "phi": ({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense"}, {"mlp.fc1", "mlp.fc2"}),
    "phi3": ({"self_attn.qkv_proj", "self_attn.o_proj"}, {"mlp.gate_up_proj", "mlp.down_proj"}),
}


def tiny_causal_lm(model_type: str):
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **TINY))


def masked_per_layer(model, layers_prefix: str) -> dict[int, set[str]]:
    """{layer index: {'self_attn.q_proj', ...}} of the masked modules under `layers_prefix`."""
    out: dict[int, set[str]] = {}
    for name, module in model.named_modules():
        match = re.fullmatch(rf".*{re.escape(layers_prefix)}\.(\d+)\.(.+)", name)
        if isinstance(module, MFTLayer) and match:
            out.setdefault(int(match.group(1)), set()).add(match.group(2))
    return out


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
@pytest.mark.parametrize("targets", ["attn", "mlp", "both", None])
def test_targets_mask_exactly_the_intended_projections(model_type, targets):
    attn, mlp = EXPECTED[model_type]
    want = {"attn": attn, "mlp": mlp, "both": attn | mlp, None: attn | mlp}[targets]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a known architecture gets no "generic rule" warning
        model = get_peft_model(tiny_causal_lm(model_type), MFTConfig(targets=targets))
    assert masked_per_layer(model, "layers") == {0: want, 1: want}
    masked = [n for n, m in model.named_modules() if isinstance(m, MFTLayer)]
    assert len(masked) == 2 * len(want)  # nothing outside the decoder layers (no lm_head)


@pytest.mark.parametrize("targets", ["attn", "mlp", "both"])
def test_llava_with_a_phi3_language_model_masks_its_fused_projections(targets):
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8)
    text = AutoConfig.for_model("phi3", **TINY)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text,
                                                      image_token_id=IMAGE_TOKEN_ID))
    model = get_peft_model(model, MFTConfig(targets=targets))
    attn, mlp = EXPECTED["phi3"]
    want = {"attn": attn, "mlp": mlp, "both": attn | mlp}[targets]
    assert masked_per_layer(model, "language_model.layers") == {0: want, 1: want}
    names = [n for n, m in model.named_modules() if isinstance(m, MFTLayer)]
    assert sum("multi_modal_projector" in n for n in names) == 2
    assert not any("vision_tower" in n for n in names)


def test_unknown_architecture_warns_listing_what_the_generic_rule_masked():
    with pytest.warns(UserWarning, match="model type 'olmo'") as record:
        model = get_peft_model(tiny_causal_lm("olmo"), MFTConfig())
    message = str(record[0].message)
    attn, mlp = LLAMA_LIKE
    for projection in sorted(attn | mlp):
        assert f"model.layers.*.{projection} (x2)" in message
    assert "14 modules" in message
    assert sum(isinstance(m, MFTLayer) for m in model.modules()) == 14


def test_explicit_target_modules_on_an_unknown_architecture_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        get_peft_model(tiny_causal_lm("olmo"), MFTConfig(target_modules=["q_proj"]))
