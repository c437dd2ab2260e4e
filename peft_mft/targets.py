# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Which modules MFT masks: the paper's attn / mlp / both variants, per-architecture defaults, the vision-tower guard.

Everything here is a module-name rule; none of it looks at weights.
"""

from __future__ import annotations

import re
from typing import Literal, Optional


Targets = Literal["attn", "mlp", "both"]

# Projection names across llama / mistral / qwen2 / gemma (q, k, v, o; gate, up, down), phi (dense; fc1, fc2) and
# phi3, whose q, k, v and gate, up projections are fused into one linear each (qkv_proj; gate_up_proj).
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "dense", "qkv_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj", "fc1", "fc2", "gate_up_proj")
# Attention blocks: self-attention under its usual names, and Mllama's cross-attention to the image.
_ATTN_BLOCKS = ("self_attn", "attention", "attn", "cross_attn")
# Feed-forward blocks: `mlp`, or Llama4's `feed_forward`; MoE experts that are nn.Linear (`shared_expert.up_proj`,
# `experts.3.down_proj`) sit below them. Experts fused into one 3-D parameter (Llama4TextExperts) are not linears.
_MLP_BLOCKS = ("mlp", "feed_forward")
# The image-text projector's linear layers: LLaVA and its successors (`multi_modal_projector.linear_1/2`, PaliGemma's
# `.linear`, Mistral3's `.patch_merger.merging_layer`, Mllama's projector, itself one linear), LLaVA (original repo),
# TinyLLaVA, the Qwen2-VL / Qwen2.5-VL merger, the Qwen3-VL merger and deep-stack mergers, Idefics3 / SmolVLM.
# The Sequential ones (Linear, GELU, Linear, ...) have their linear layers at even indices.
_EVEN = r"\d*[02468]"
PROJECTOR_PATTERN = (
    r"(?:multi_modal_projector(?:\.linear(?:_\d+)?|\.patch_merger\.merging_layer)?"
    rf"|mm_projector\.{_EVEN}|connector\._connector\.{_EVEN}|visual\.merger\.mlp\.{_EVEN}"
    r"|visual\.(?:merger|deepstack_merger_list\.\d+)\.linear_fc[12]|connector\.modality_projection\.proj)"
)
# Attribute names under which VLMs keep their vision encoder; MFT never masks anything beneath them.
VISION_TOWER_NAMES = ("vision_tower", "vision_model", "visual", "image_encoder", "vision_encoder")
# Attribute names under which VLMs keep their language model (Idefics3 and SmolVLM: `text_model`).
LANGUAGE_MODEL_NAMES = ("language_model", "text_model")

_PROJECTOR_RE = re.compile(rf"(?:.*\.)?{PROJECTOR_PATTERN}")
_LAYER_INDEX_RE = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")

# Projection types in display order; module names map to them (phi: dense = o, fc1 = up, fc2 = down; phi3's fused
# projections keep their own type).
PROJECTION_TYPES = ("q", "k", "v", "o", "gate", "up", "down", "projector")
_PROJECTION_OF_NAME = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "dense": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "fc1": "up",
    "down_proj": "down",
    "fc2": "down",
    "qkv_proj": "qkv",
    "gate_up_proj": "gate_up",
}


def targets_regex(targets: Targets, language_model_only: bool) -> str:
    """Full-match regex for a paper variant: the language model's attention and/or MLP projections + the projector.

    `language_model_only` scopes the projections to modules under a `language_model` attribute, as in VLMs, whose
    vision towers reuse names such as `q_proj` and `mlp.fc1`.
    """
    attn = rf"(?:{'|'.join(_ATTN_BLOCKS)})\.(?:{'|'.join(ATTN_PROJECTIONS)})"
    mlp = rf"(?:{'|'.join(_MLP_BLOCKS)})\.(?:.*\.)?(?:{'|'.join(MLP_PROJECTIONS)})"
    projections = {"attn": attn, "mlp": mlp, "both": f"{attn}|{mlp}"}[targets]
    scope = rf"(?:.*\.)?(?:{'|'.join(LANGUAGE_MODEL_NAMES)})\.(?:.*\.)?" if language_model_only else r"(?:.*\.)?"
    return rf"{scope}(?:{projections})|(?:.*\.)?{PROJECTOR_PATTERN}"


_LLM_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_VLM_BOTH = targets_regex("both", language_model_only=True)

TRANSFORMERS_MODELS_TO_MFT_TARGET_MODULES_MAPPING: dict[str, list[str] | str] = {
    "llama": _LLM_PROJECTIONS,
    "mistral": _LLM_PROJECTIONS,
    "qwen2": _LLM_PROJECTIONS,
    "qwen3": _LLM_PROJECTIONS,
    "gemma": _LLM_PROJECTIONS,
    "gemma2": _LLM_PROJECTIONS,
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "llava": _VLM_BOTH,
    "llava_next": _VLM_BOTH,
    "llava_onevision": _VLM_BOTH,
    "qwen2_vl": _VLM_BOTH,
    "qwen2_5_vl": _VLM_BOTH,
    "qwen3_vl": _VLM_BOTH,
    "tinyllava": _VLM_BOTH,
    "idefics3": _VLM_BOTH,
    "smolvlm": _VLM_BOTH,
    "paligemma": _VLM_BOTH,
    "mllama": _VLM_BOTH,
    "mistral3": _VLM_BOTH,
    "llama4": _VLM_BOTH,
    "gemma3": _VLM_BOTH,
    "internvl": _VLM_BOTH,
    "aya_vision": _VLM_BOTH,
}


def is_projector(module_name: str) -> bool:
    """True for the linear layers of a VLM's image-text projector (`PROJECTOR_PATTERN`)."""
    return _PROJECTOR_RE.fullmatch(module_name) is not None


def projection_type(module_name: str) -> str:
    """The projection type of a masked module: one of `PROJECTION_TYPES`, else its last name component."""
    if is_projector(module_name):
        return "projector"
    last = module_name.rsplit(".", 1)[-1]
    return _PROJECTION_OF_NAME.get(last, last)


def projection_order(projection: str) -> tuple[int, str]:
    """Sort key: `PROJECTION_TYPES` order, other types after them by name."""
    return (
        PROJECTION_TYPES.index(projection) if projection in PROJECTION_TYPES else len(PROJECTION_TYPES),
        projection,
    )


def is_vision_tower_module(key: str) -> bool:
    """True for modules inside a vision encoder (but not the projector, e.g. Qwen2-VL's `visual.merger`)."""
    if is_projector(key):
        return False
    return any(part in VISION_TOWER_NAMES for part in key.split("."))


def layer_index(key: str, layers_pattern: Optional[list[str] | str]) -> Optional[int]:
    """The decoder-layer index in a module name (`...layers.3.self_attn.q_proj` -> 3), as PEFT reads it; else None."""
    if not layers_pattern:
        match = _LAYER_INDEX_RE.match(key)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match:
                break
    return int(match.group("idx")) if match else None
