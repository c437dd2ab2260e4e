# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Every VLM family MFT knows masks its language model's projections and its projector, never its vision encoder;
a train step changes only scores; save / load / merge round trips are exact. Tiny random models from configs."""

import re
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_mft import MFTConfig, MFTLayer, create_mft_optimizer

from .vlm_families import FAMILIES, tiny_vlm


ATTN = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
MLP = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
CROSS_ATTN = {"cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.o_proj"}
FEED_FORWARD = {"feed_forward.gate_proj", "feed_forward.up_proj", "feed_forward.down_proj"}
SHARED_EXPERT = {"feed_forward.shared_expert.gate_proj", "feed_forward.shared_expert.up_proj",
                 "feed_forward.shared_expert.down_proj"}
LLAVA_PROJECTOR = {"model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"}
QWEN_MERGER = {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2"}
# Per family, read from transformers' modelling code: (the decoder layers' prefix, {layer: masked projections},
# the projector's linears, the warning MFT must give about what it cannot mask).
EXPECTED = {
    "llava": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP}, LLAVA_PROJECTOR, None),
    "llava_next": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP}, LLAVA_PROJECTOR, None),
    "llava_onevision": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP}, LLAVA_PROJECTOR, None),
    "internvl": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP}, LLAVA_PROJECTOR, None),
    "aya_vision": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP}, LLAVA_PROJECTOR, None),
    "qwen2_vl": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP}, QWEN_MERGER, None),
    "qwen2_5_vl": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP}, QWEN_MERGER, None),
    "qwen3_vl": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP},
                 {"model.visual.merger.linear_fc1", "model.visual.merger.linear_fc2",
                  "model.visual.deepstack_merger_list.0.linear_fc1",
                  "model.visual.deepstack_merger_list.0.linear_fc2"},
                 None),
    "idefics3": ("model.text_model.layers", {0: ATTN | MLP, 1: ATTN | MLP},
                 {"model.connector.modality_projection.proj"}, None),
    "smolvlm": ("model.text_model.layers", {0: ATTN | MLP, 1: ATTN | MLP},
                {"model.connector.modality_projection.proj"}, None),
    "paligemma": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP},
                  {"model.multi_modal_projector.linear"}, None),
    "mllama": ("model.language_model.layers", {0: ATTN | MLP, 1: CROSS_ATTN | MLP},
               {"model.multi_modal_projector"}, None),
    "mistral3": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP},
                 LLAVA_PROJECTOR | {"model.multi_modal_projector.patch_merger.merging_layer"}, None),
    "llama4": ("language_model.model.layers", {0: ATTN | FEED_FORWARD, 1: ATTN | SHARED_EXPERT},
               {"multi_modal_projector.linear_1"}, "fused 3-D parameters"),
    "gemma3": ("model.language_model.layers", {0: ATTN | MLP, 1: ATTN | MLP}, set(), "mm_input_projection_weight"),
}
assert set(EXPECTED) == set(FAMILIES)


def _mft(model_type, seed=0):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = get_peft_model(tiny_vlm(model_type, seed), MFTConfig(init_score=3.0, temperature=0.5))
    return model, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _masked(model) -> set[str]:
    return {name.removeprefix("base_model.model.") for name, m in model.named_modules() if isinstance(m, MFTLayer)}


def _text_ids(model, seed=0):
    vocab = model.config.get_text_config().vocab_size
    return torch.randint(3, min(vocab, 60), (2, 7), generator=torch.Generator().manual_seed(seed))


def _text_forward(model, ids, **kwargs):
    """A text-only forward. Llama4ForConditionalGeneration's own fails without images in transformers 5.24
    ('MoeCausalLMOutputWithPast' has no 'image_outputs', base model alike), so Llama4 runs its language model."""
    if model.config.model_type == "llama4":
        model = model.get_base_model().language_model if isinstance(model, PeftModel) else model.language_model
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)


def _logits(model, ids):
    with torch.no_grad():
        return _text_forward(model, ids).logits


@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_language_model_and_the_projector_are_masked_never_the_vision_encoder(model_type):
    prefix, per_layer, projector, warning = EXPECTED[model_type]
    model, caught = _mft(model_type)
    masked = _masked(model)
    expected = {f"{prefix}.{layer}.{name}" for layer, names in per_layer.items() for name in names} | projector
    assert masked == expected, (sorted(masked - expected), sorted(expected - masked))
    generic = [w for w in caught if "does not know the projections" in w]
    assert not generic  # a known family: no generic-rule warning
    if warning is None:
        assert not [w for w in caught if "MFT" in w or "mask" in w], caught
    else:
        assert any(warning in w for w in caught), caught


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_step_trains_only_scores_and_save_load_merge_are_exact(model_type, tmp_path):
    model, _ = _mft(model_type)
    ids = _text_ids(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "mft_scores" not in n}
    scores = {n: p.detach().clone() for n, p in model.named_parameters() if "mft_scores" in n}
    model.train()
    optimizer = create_mft_optimizer(model)
    _text_forward(model, ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in frozen.items())
    moved = [n for n, before in scores.items() if not torch.equal(params[n], before)]
    assert any(re.search(r"layers\.\d+\..*mft_scores", n) for n in moved)  # the language model's scores learned
    expected = _logits(model, ids)

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_vlm(model_type), tmp_path)
    assert torch.equal(_logits(reloaded, ids), expected)
    merged = reloaded.merge_and_unload()
    assert not any(isinstance(m, MFTLayer) for m in merged.modules())
    torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-5, rtol=1e-5)
