# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Tiny random VLMs of every family transformers ships that MFT knows by name, built from configs in code."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForImageTextToText


TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=8)
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
# Per family, what the shared sizes above do not reach: vision encoders that count depth or width under other names,
# the Qwen-VL rotary sections (they must add up to head_dim / 2), Mllama's cross-attention layer, Llama4's mix of a
# dense and an MoE layer.
_MROPE = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
EXTRA = {
    "qwen2_vl": (_MROPE, dict(depth=1, embed_dim=16, num_heads=2)),
    "qwen2_5_vl": (_MROPE, dict(depth=1, num_heads=2, out_hidden_size=16, fullatt_block_indexes=[0])),
    "qwen3_vl": (_MROPE, dict(depth=1, num_heads=2, out_hidden_size=16, deepstack_visual_indexes=[0])),
    "mllama": (dict(cross_attention_layers=[1]), {}),
    "llama4": (dict(interleave_moe_layer_step=2, moe_layers=[1], intermediate_size_mlp=32, num_local_experts=2), {}),
}
FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "aya_vision",
            "idefics3", "smolvlm", "paligemma", "mllama", "mistral3", "llama4", "gemma3")


def tiny_vlm(model_type: str, seed: int = 0):
    """A randomly initialised `model_type` VLM with 2 decoder layers of width 16 and a 1-layer vision encoder."""
    config = AutoConfig.for_model(model_type)
    text_extra, vision_extra = EXTRA.get(model_type, ({}, {}))
    for sub_config, sizes in ((config.text_config, TEXT | text_extra), (config.vision_config, VISION | vision_extra)):
        for key, value in sizes.items():
            if hasattr(sub_config, key) or key in text_extra or key in vision_extra:
                setattr(sub_config, key, value)
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config).eval()
