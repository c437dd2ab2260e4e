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
# The image-text projector's linear layers: LLaVA (transformers), LLaVA (original repo), TinyLLaVA, Qwen2-VL merger.
# The last three are nn.Sequential(Linear, GELU, Linear, ...), whose linear layers sit at even indices.
_EVEN = r"\d*[02468]"
PROJECTOR_PATTERN = (
    rf"(?:multi_modal_projector\.linear_\d+|mm_projector\.{_EVEN}|connector\._connector\.{_EVEN}"
    rf"|visual\.merger\.mlp\.{_EVEN})"
)
# Attribute names under which VLMs keep their vision encoder; MFT never masks anything beneath them.
VISION_TOWER_NAMES = ("vision_tower", "vision_model", "visual", "image_encoder", "vision_encoder")

_PROJECTOR_RE = re.compile(rf"(?:.*\.)?{PROJECTOR_PATTERN}")
_LAYER_INDEX_RE = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


def targets_regex(targets: Targets, language_model_only: bool) -> str:
    """Full-match regex for a paper variant: the language model's attention and/or MLP projections + the projector.

    `language_model_only` scopes the projections to modules under a `language_model` attribute, as in VLMs, whose
    vision towers reuse names such as `q_proj` and `mlp.fc1`.
    """
    attn = rf"(?:self_attn|attention|attn)\.(?:{'|'.join(ATTN_PROJECTIONS)})"
    mlp = rf"mlp\.(?:{'|'.join(MLP_PROJECTIONS)})"
    projections = {"attn": attn, "mlp": mlp, "both": f"{attn}|{mlp}"}[targets]
    scope = r"(?:.*\.)?language_model\.(?:.*\.)?" if language_model_only else r"(?:.*\.)?"
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
    "tinyllava": _VLM_BOTH,
}


def is_vision_tower_module(key: str) -> bool:
    """True for modules inside a vision encoder (but not the projector, e.g. Qwen2-VL's `visual.merger`)."""
    if _PROJECTOR_RE.fullmatch(key):
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
