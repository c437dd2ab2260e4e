# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Tiny Llama MFT adapters whose masks are set by hand, so that mask statistics can be checked against numbers
computed here with `math` (not with the library's tensor code).

Soft masks with `temperature=1`, `normalize_soft_mask=False` and scores stored unscaled: `M = sigmoid(S)`. Every
score is `HIGH` (M ~ 1) except the entries listed in `HAND_SCORES`.
"""

import math

import torch
from peft import get_peft_model

from peft_mft import MFTConfig

from .conftest import make_llama


HIGH = 10.0
# Entries per module of make_llama() (hidden 16, 2 heads of 8, 1 kv head, intermediate 32), per layer.
NUMEL = {"q": 16 * 16, "k": 8 * 16, "v": 8 * 16, "o": 16 * 16, "gate": 32 * 16, "up": 32 * 16, "down": 16 * 32}
LAYERS = 2
TOTAL_NUMEL = LAYERS * sum(NUMEL.values())  # 4608
MODULE_OF = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}

# {module name: {flat index: score}}. sigmoid(-10) = 4.5e-5 (near zero), sigmoid(0) = 0.5 (not < 0.5),
# sigmoid(-1) = 0.269 (below one half, not near zero at 0.1).
_Q0 = dict.fromkeys(range(3), -10.0) | dict.fromkeys(range(3, 8), 0.0) | {8: -1.0, 9: -1.0}
HAND_SCORES = {
    "model.layers.0.self_attn.q_proj": _Q0,
    "model.layers.1.self_attn.q_proj": {0: -10.0},
    "model.layers.1.mlp.down_proj": {5: -10.0, 6: -10.0, 7: -1.0},
}


# HAND_SCORES with one near-zero entry moved: layer 0's q entry 2 back to HIGH, layer 0's up entry 11 near zero.
# Near-zero sets (M < 0.1): 6 entries in each; 5 shared, 7 in their union (Jaccard 5/7).
MOVED_SCORES = {
    **HAND_SCORES,
    "model.layers.0.self_attn.q_proj": _Q0 | {2: HIGH},
    "model.layers.0.mlp.up_proj": {11: -10.0},
}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def module_name(layer: int, projection: str) -> str:
    return f"model.layers.{layer}.{MODULE_OF[projection]}"


def hand_config(**kwargs) -> MFTConfig:
    # score_scale 1 and offset 0: the trained tensor is S itself, so the hand-picked values below are the scores
    return MFTConfig(init_score=HIGH, temperature=1.0, normalize_soft_mask=False, score_scale=1.0, score_offset=0.0,
                     **kwargs)


def set_scores(model, scores: dict, adapter_name: str = "default") -> None:
    """Write hand-picked scores into a PeftModel's layers."""
    for name, entries in scores.items():
        flat = model.base_model.model.get_submodule(name).mft_scores[adapter_name].data.view(-1)
        for index, value in entries.items():
            flat[index] = value


def hand_masked_llama(scores: dict = HAND_SCORES, **config_kwargs):
    """make_llama() with a soft MFT adapter whose scores are HIGH except `scores`."""
    model = get_peft_model(make_llama(), hand_config(**config_kwargs))
    set_scores(model, scores)
    return model


def expected(names, threshold: float = 0.1, scores: dict = HAND_SCORES) -> dict:
    """numel, mean, near-zero and below-half counts of the masks of `names`, computed with math."""
    numel = total = near_zero = below_half = 0
    for name in names:
        size = NUMEL[next(p for p, suffix in MODULE_OF.items() if name.endswith(suffix))]
        values = [sigmoid(s) for s in scores.get(name, {}).values()]
        values += [sigmoid(HIGH)] * (size - len(values))
        numel += size
        total += sum(values)
        near_zero += sum(v < threshold for v in values)
        below_half += sum(v < 0.5 for v in values)
    return {"numel": numel, "mean": total / numel, "near_zero": near_zero, "below_half": below_half}


def all_module_names() -> list[str]:
    return [module_name(layer, p) for layer in range(LAYERS) for p in MODULE_OF]


def hand_masks_as_tensors(scores: dict = HAND_SCORES) -> dict[str, torch.Tensor]:
    """The masks of `hand_masked_llama`, built here entry by entry (float64)."""
    masks = {}
    for name in all_module_names():
        size = NUMEL[next(p for p, suffix in MODULE_OF.items() if name.endswith(suffix))]
        values = [sigmoid(HIGH)] * size
        for index, score in scores.get(name, {}).items():
            values[index] = sigmoid(score)
        masks[name] = torch.tensor(values, dtype=torch.float64)
    return masks
