# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`MFTConfig`: the configuration of a Mask Fine-Tuning adapter, and the paper's per-backbone presets."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from peft.config import PeftConfig
from peft.utils.constants import CONFIG_NAME

from .errors import AdapterFileError, MFTInputError
from .mask import MaskSpec
from .peft_type import add_peft_type_member
from .targets import targets_regex
from .weight_files import check_finite_weight_file, check_folder_files


PEFT_TYPE_MFT = add_peft_type_member("MFT")

# (init_score, temperature) that the paper tuned per backbone (docs/method.md); larger models reuse these values.
MFT_PRESETS: dict[str, tuple[float, float]] = {
    "qwen2.5-0.5b": (7.0, 2.3),
    "tinyllama-1.1b": (3.0, 0.5),
    "gemma-2b": (5.0, 1.3),
    "phi-2": (9.0, 1.1),
}
# Preset names configs saved by earlier releases may record, with the preset of the same values they now mean.
RENAMED_PRESETS = {"smollm2": "tinyllama-1.1b"}

# Model-name patterns (lower case, without the organisation) of each preset's family: every size of it.
_PRESET_FAMILIES = {
    "qwen2.5-0.5b": r"qwen2\.5-",
    "tinyllama-1.1b": r"tinyllama",
    "gemma-2b": r"gemma-(?:1\.1-)?\d+(?:\.\d+)?b(?:$|-)",
    "phi-2": r"phi-2(?:$|-)",
}

# A model whose name matches no family: the paper's preset for its one Llama-architecture backbone, the architecture
# most models without a preset of their own share (docs/guide.md has how it compares with the others).
FALLBACK_PRESET = "tinyllama-1.1b"
# Model types whose every checkpoint belongs to one preset's family (used when the name matches none).
_PRESET_MODEL_TYPES = {"qwen2": "qwen2.5-0.5b", "gemma": "gemma-2b", "phi": "phi-2"}


def preset_for_name(name: str) -> Optional[str]:
    """The preset whose family matches model id or path `name` ("Qwen/Qwen2.5-7B" -> "qwen2.5-0.5b"), else None."""
    model_name = name.rstrip("/").rsplit("/", 1)[-1].lower()
    model_name = RENAMED_PRESETS.get(model_name, model_name)
    if model_name in MFT_PRESETS:
        return model_name
    return next((key for key, pattern in _PRESET_FAMILIES.items() if re.match(pattern, model_name)), None)


def preset_for_model(model_config: dict) -> tuple[str, str]:
    """(preset, why) for a base model's config dict (a VLM's language model decides): its name or path, else its
    language model's type, else `FALLBACK_PRESET`."""
    text_config = model_config.get("text_config") or {}
    for name in (model_config.get("_name_or_path"), text_config.get("_name_or_path")):
        preset = preset_for_name(str(name)) if name else None
        if preset:
            return preset, f"model name {name!r}"
    model_type = text_config.get("model_type") or model_config.get("model_type")
    if model_type in _PRESET_MODEL_TYPES:
        return _PRESET_MODEL_TYPES[model_type], f"model type {model_type!r}"
    return FALLBACK_PRESET, f"no preset family matches model type {model_type!r}, so the fallback"

DEFAULT_HARD_SPARSITY = 0.01

# The learning-rate multipliers `score_scale` defaults to: an Adam step `lr` on the trained tensor moves a score by
# about `score_scale * lr`. Soft masks learn at a score step of about 0.1 (the paper's rate) and hard masks at about
# 0.01; these put the default rates of `transformers.Trainer` (5e-5) and TRL (2e-5) near those steps (soft: 0.2 and
# 0.08; hard: 0.013 and 0.005). Powers of two, so that scaling is exact in floating point.
DEFAULT_SOFT_SCORE_SCALE = 4096.0
DEFAULT_HARD_SCORE_SCALE = 256.0

# |init_score / T| above this starts the float32 sigmoid within 5e-5 of 0 or 1: dM/dS = M(1 - M)/T is ~1e-4 times
# its value at S = 0 and masks barely move (exactly 0 beyond |S/T| ~ 17). The paper's presets reach 8.2 (Phi-2).
SATURATED_INIT_RATIO = 10.0
# A score step of 0.1 (the default learning rate) moves S/T by 0.1/T: > 10 below T = 0.01 (masks jump between 0
# and 1), < 0.001 above T = 100 (masks barely move). The paper's temperatures are 0.5-2.3.
TEMPERATURE_RANGE = (0.01, 100.0)




def as_float32(value: float) -> float:
    """`value` rounded to float32, the dtype scores and temperatures are computed in."""
    return torch.tensor(value, dtype=torch.float32).item()


def warn_if_soft_mask_saturates(init_score: float, temperature: float) -> None:
    """Warn (once per distinct setting, through `warnings`) when a soft mask cannot train well: a saturated sigmoid
    at initialisation (|init_score / temperature| > 10) or an extreme temperature (outside [0.01, 100])."""
    ratio = init_score / temperature
    if abs(ratio) > SATURATED_INIT_RATIO:
        tail = math.exp(-abs(ratio))
        initial_slope = tail / (1.0 + tail) ** 2 / temperature  # sigmoid'(x) = e^-|x| / (1 + e^-|x|)^2
        warnings.warn(
            f"MFTConfig(init_score={init_score}, temperature={temperature}): the soft mask starts saturated "
            f"(|init_score / temperature| = {abs(ratio):.3g} > {SATURATED_INIT_RATIO:g}); dM/dS = "
            f"{initial_slope:.2g}, so the masks will barely train. Use a larger temperature or a smaller init_score "
            "(paper presets: MFTConfig.from_preset).",
            UserWarning,
            stacklevel=4,  # the line that created the MFTConfig
        )
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        warnings.warn(
            f"MFTConfig(temperature={temperature}) is outside [{low:g}, {high:g}]: a score update of 0.1 moves S/T by "
            f"{0.1 / temperature:.3g}, so masks will "
            f"{'jump between 0 and 1' if temperature < low else 'barely move'}. The paper uses 0.5-2.3.",
            UserWarning,
            stacklevel=4,  # the line that created the MFTConfig
        )


def check_sparsity(sparsity) -> float:
    """`sparsity` (the fraction of each matrix zeroed) as a float; `MFTInputError` unless it is a number in [0, 1)."""
    if isinstance(sparsity, bool) or not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise MFTInputError(
            f"MFTConfig.sparsity is the fraction of weights zeroed and must be in [0, 1), got {sparsity!r}."
        )
    return float(sparsity)


# The type of each MFTConfig field that is not PEFT's; None is allowed except for `_REQUIRED_FIELDS`.
_FIELD_TYPES = {
    "mask_type": str, "init_score": "number", "temperature": "number", "preset": str, "normalize_soft_mask": bool,
    "straight_through": bool, "sparsity": "number", "targets": str, "init_weights": bool, "scores_dtype": str,
    "score_scale": "number", "score_offset": "number",
}
_REQUIRED_FIELDS = ("mask_type", "normalize_soft_mask", "straight_through", "init_weights", "scores_dtype")


@dataclass
class MFTConfig(PeftConfig):
    """Configuration of an MFT adapter (`MFTModel`): which `nn.Linear` weights get a learned mask, and how scores
    become masks. Use it where you would use `LoraConfig`: `get_peft_model(model, MFTConfig(...))`.

    Each targeted weight `W` (out x in, frozen) gets a float32 score tensor `S` of the same shape, trained as
    `S = score_offset + score_scale * P`; the layer uses `W * M`. Soft masks: `M = sigmoid(S / temperature)`, divided
    by its initial value unless `normalize_soft_mask=False`, so that a fresh adapter is exactly the base model. Hard
    masks: the `sparsity` fraction of entries with the smallest `|S|` is zeroed per matrix, the rest kept.

    Args:
        mask_type: "soft" (S-MFT, the default) or "hard" (H-MFT).
        init_score: Soft masks: the score every entry starts at, so that `M` starts near 1 (paper: 7.0 for
            Qwen2.5-0.5B, 3.0 TinyLlama-1.1B, 5.0 Gemma-2B, 9.0 Phi-2). None: from a preset.
        temperature: Soft masks: `T > 0` in `sigmoid(S / T)`; `dM/dS = M(1 - M) / T`. None: from a preset.
        preset: Soft masks: the (init_score, temperature) preset that fills whichever of the two is None, one of
            `MFT_PRESETS`. None: chosen from the base model's name or type when the adapter is created, and recorded.
        normalize_soft_mask: Soft masks: divide `M` by its initial value, so a fresh adapter is the identity
            (PEFT's convention). False is the paper-literal `M = sigmoid(S / T)`.
        straight_through: Soft masks: the backward treats `dM/dS` as 1 ("S-MFT STE").
        sparsity: Hard masks: the fraction of each matrix zeroed, in [0, 1) (default 0.01; paper: 0.0005 best for
            Qwen2.5-0.5B, 0.01 for TinyLlama-1.1B).
        targets: "attn" (q, k, v, o), "mlp" (gate, up, down) or "both", each plus the image-text projector; in a VLM
            only the language model's projections. Used when `target_modules` is None.
        target_modules: Module names (suffix match) or a full-match regex of the `nn.Linear` layers to mask. None: the
            architecture's default (every language-model projection and the projector), or `targets`. Modules in a
            vision tower are never masked.
        exclude_modules: Module names or a regex of modules not to mask.
        layers_to_transform: Decoder-layer indices to mask; modules outside numbered layers (the projector) stay
            masked when targets are given as a regex or `targets`.
        layers_pattern: The name of the layer list `layers_to_transform` indexes, e.g. "layers".
        modules_to_save: Modules trained in full besides the masks and saved with the adapter.
        score_scale: The trained tensor `P` holds the scores scaled, so an optimizer step `lr` moves a score by
            `score_scale * lr`. None: 4096 for soft masks, 256 for hard ones, at which the default learning rates of
            `transformers.Trainer` (5e-5) and TRL (2e-5) train masks. Adapters saved before this field load with 1.
        score_offset: Soft masks: the score at `P = 0`. None: `init_score`, so `P` starts at 0 and weight decay pulls
            masks towards their initial value.
        scores_dtype: The dtype of the saved scores: "float32", or the 16-bit base dtype they were kept in with
            `get_peft_model(..., autocast_adapter_dtype=False)`. Loading refuses other dtypes.
        init_weights: True: scores start at `init_score` (soft) or `|W| / mean |W|` (hard). False: random scores,
            for tests.

    `PeftConfig`'s fields apply as well, such as `task_type` ("CAUSAL_LM" for a language model).

    Raises:
        ValueError: A field with a value of the wrong type or out of range, naming the field and the value.
        TypeError: A `LoraConfig` argument (`r`, `lora_alpha`, ...), saying what MFT uses instead.
    """

    mask_type: Literal["soft", "hard"] = field(
        default="soft",
        metadata={"help": "'soft' (S-MFT): M = sigmoid(S/T). 'hard' (H-MFT): binary mask zeroing the smallest |S|."},
    )
    init_score: Optional[float] = field(
        default=None,
        metadata={
            "help": (
                "Soft masks: the constant every score starts at, so that M starts near 1 (paper: 7.0 for "
                "Qwen2.5-0.5B, 3.0 TinyLlama-1.1B, 5.0 Gemma-2B, 9.0 Phi-2). None: from the preset. Hard masks "
                "initialise scores to |W| / mean |W| instead."
            )
        },
    )
    temperature: Optional[float] = field(
        default=None,
        metadata={
            "help": (
                "Soft masks: sigmoid temperature T > 0; dM/dS = M(1-M)/T, so a small T saturates the sigmoid "
                "(paper: 2.3 for Qwen2.5-0.5B, 0.5 TinyLlama-1.1B, 1.3 Gemma-2B, 1.1 Phi-2). None: from the preset."
            )
        },
    )
    preset: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                f"Soft masks: the (init_score, temperature) preset that fills whichever of the two is None: one of "
                f"{sorted(MFT_PRESETS)}. None: chosen from the base model's name or type when the adapter is "
                f"created ({FALLBACK_PRESET!r} when none matches) and recorded here."
            )
        },
    )
    normalize_soft_mask: bool = field(
        default=True,
        metadata={
            "help": (
                "Soft masks: divide M by its initial value sigmoid(init_score/T), so M is exactly 1 at initialisation "
                "(PEFT's no-op convention) and the gradient is the paper's times 1/M0. False is the paper-literal "
                "M = sigmoid(S/T), whose initial model has every masked weight scaled by M0 (0.954 for 7.0, 2.3)."
            )
        },
    )
    straight_through: bool = field(
        default=False,
        metadata={"help": "Soft masks only ('S-MFT STE'): forward as usual, backward treats dM/dS as 1."},
    )
    sparsity: Optional[float] = field(
        default=None,
        metadata={
            "help": (
                "Hard masks only: the fraction of entries zeroed in each weight matrix, in [0, 1); exactly "
                f"floor(sparsity * numel) entries. Defaults to {DEFAULT_HARD_SPARSITY} for hard masks (paper: "
                "0.0005 best for Qwen2.5-0.5B, 0.01 for TinyLlama-1.1B)."
            )
        },
    )
    targets: Optional[Literal["attn", "mlp", "both"]] = field(
        default=None,
        metadata={
            "help": (
                "Shortcut for the paper's variants: 'attn' (q, k, v, o projections), 'mlp' (gate, up, down) or "
                "'both', each plus the multimodal projector; in a VLM only the language model's projections. "
                "Used only when `target_modules` is None."
            )
        },
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": (
                "Module names (suffix match) or a full-match regex of the nn.Linear layers to mask. None: the "
                "architecture's default (all language-model projections and the projector), or `targets`. "
                "Modules inside a vision tower are never masked."
            )
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex of modules not to mask."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={
            "help": (
                "Decoder-layer indices to mask (e.g. the paper's mid layers 8-11). Modules outside numbered layers, "
                "such as the projector, stay masked when targets are given as a regex or `targets`."
            )
        },
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Name of the layer list whose index `layers_to_transform` refers to, e.g. 'layers'."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Modules, apart from the masked ones, trained in full and saved with the adapter."},
    )
    scores_dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={
            "help": (
                "The dtype of the saved scores: float32, or the 16-bit base dtype the scores were kept in "
                "(`autocast_adapter_dtype=False`; set when the adapter is created). Loading refuses score tensors "
                "of any other dtype."
            )
        },
    )
    score_scale: Optional[float] = field(
        default=None,
        metadata={
            "help": (
                "The trained tensor P holds the scores scaled: soft masks use S = score_offset + score_scale * P, "
                "hard masks start from P = S0 / score_scale and rank |P|. So an optimizer step lr moves a score by "
                f"score_scale * lr: a learning-rate multiplier that works with any optimizer and trainer. None: "
                f"{DEFAULT_SOFT_SCORE_SCALE:g} for soft masks, {DEFAULT_HARD_SCORE_SCALE:g} for hard ones, which let "
                "the default learning rates of transformers.Trainer (5e-5) and TRL (2e-5) train masks. Adapters "
                "saved before this field existed load with 1 (P is S)."
            )
        },
    )
    score_offset: Optional[float] = field(
        default=None,
        metadata={
            "help": (
                "Soft masks: the score at P = 0, so that P starts at 0 and weight decay pulls each mask towards its "
                "initial value. None: `init_score` (set when the adapter is created); 0 for adapters saved before "
                "`score_scale` existed. Hard masks: 0."
            )
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": (
                "True: soft scores start at init_score, hard scores at |W| / mean |W| of their matrix. False: "
                "random scores (for tests): "
                "init_score + 2*T*N(0, 1) for soft masks, N(0, 1) for hard masks."
            )
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE_MFT
        self._check_types()
        if self.mask_type not in ("soft", "hard"):
            raise ValueError(f"MFTConfig.mask_type must be 'soft' or 'hard', got {self.mask_type!r}.")
        if self.score_scale is None:
            self.score_scale = DEFAULT_HARD_SCORE_SCALE if self.mask_type == "hard" else DEFAULT_SOFT_SCORE_SCALE
        if not (math.isfinite(self.score_scale) and self.score_scale > 0):
            raise ValueError(f"MFTConfig.score_scale must be a finite number > 0, got {self.score_scale!r}.")
        if self.score_offset is not None and not math.isfinite(self.score_offset):
            raise ValueError(f"MFTConfig.score_offset must be a finite number, got {self.score_offset!r}.")
        if self.mask_type == "hard" and self.score_offset not in (None, 0, 0.0):
            raise ValueError(f"MFTConfig.score_offset applies to soft masks only, got {self.score_offset!r}.")
        self._resolve_score_offset()
        self.preset = RENAMED_PRESETS.get(self.preset, self.preset)
        if self.preset is not None:
            if self.preset not in MFT_PRESETS:
                raise ValueError(f"MFTConfig.preset must be one of {sorted(MFT_PRESETS)}, got {self.preset!r}.")
            if self.mask_type == "soft":
                self.resolve_preset(self.preset)
        if self.temperature is not None and (not math.isfinite(self.temperature) or self.temperature <= 0):
            raise ValueError(f"MFTConfig.temperature must be a finite number > 0, got {self.temperature!r}.")
        if self.temperature is not None and torch.isinf(1.0 / torch.tensor(self.temperature, dtype=torch.float32)):
            raise ValueError(
                f"MFTConfig.temperature={self.temperature!r} is {as_float32(self.temperature):g} in float32, where "
                "the scores are divided by it: S / T would be inf and the first step NaN. Use a temperature >= "
                f"{TEMPERATURE_RANGE[0]:g} (the paper uses 0.5-2.3)."
            )
        if self.init_score is not None and not math.isfinite(self.init_score):
            raise ValueError(f"MFTConfig.init_score must be a finite number, got {self.init_score!r}.")
        if self.mask_type == "hard":
            if self.straight_through:
                raise ValueError(
                    "MFTConfig.straight_through applies to soft masks only; hard masks always use a straight-through "
                    "backward."
                )
            self.sparsity = check_sparsity(DEFAULT_HARD_SPARSITY if self.sparsity is None else self.sparsity)
        elif self.sparsity is not None:
            raise ValueError(
                f"MFTConfig.sparsity={self.sparsity!r} applies to hard masks only; set mask_type='hard' or drop it."
            )
        elif self.init_score is not None and self.temperature is not None:
            self._check_soft_mask()
        if self.scores_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"MFTConfig.scores_dtype must be 'float32', 'bfloat16' or 'float16', got {self.scores_dtype!r}."
            )
        if self.targets is not None:
            if self.targets not in ("attn", "mlp", "both"):
                raise ValueError(f"MFTConfig.targets must be 'attn', 'mlp' or 'both', got {self.targets!r}.")
            # A config saved after `targets` was resolved holds the resolved regex in `target_modules`.
            resolved = [targets_regex(self.targets, scoped) for scoped in (True, False)]
            if self.target_modules is not None and self.target_modules not in resolved:
                raise ValueError(
                    f"MFTConfig got both targets={self.targets!r} and target_modules={self.target_modules!r}; "
                    "give one of them."
                )
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("MFTConfig.layers_pattern is only used together with layers_to_transform.")

    def _check_types(self) -> None:
        """`ValueError` naming the first field whose value is not of its type (`_FIELD_TYPES`): JSON from elsewhere can
        hold `true` or `"false"` where a number or a bool belongs, and Python would read either as something else."""
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is None and name not in _REQUIRED_FIELDS:
                continue
            if kind == "number":
                valid = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                valid = isinstance(value, kind)
            if not valid:
                expected = "a number" if kind == "number" else f"a {kind.__name__}"
                raise ValueError(f"MFTConfig.{name} must be {expected}, got {value!r} ({type(value).__name__}).")

    def _check_soft_mask(self) -> None:
        initial = torch.sigmoid(torch.tensor(self.init_score, dtype=torch.float32) / self.temperature)
        if not self.straight_through and (initial * (1 - initial)).item() == 0.0:  # dM/dS at the first step
            raise ValueError(
                f"MFTConfig.init_score={self.init_score} / MFTConfig.temperature={self.temperature} = "
                f"{self.init_score / self.temperature:.4g} saturates the float32 sigmoid, so M starts at exactly "
                f"{'1' if self.init_score > 0 else '0'} and every score gradient is exactly 0: the masks cannot "
                "train. "
                f"Keep |init_score / temperature| <= {SATURATED_INIT_RATIO:g} (the paper's presets use 3 to 8), or "
                "set straight_through=True."
            )
        warn_if_soft_mask_saturates(self.init_score, self.temperature)
        if self.normalize_soft_mask and not self.mask_spec().normalizer >= torch.finfo(torch.float32).tiny:
            raise ValueError(
                f"MFTConfig(init_score={self.init_score}, temperature={self.temperature}): normalize_soft_mask "
                "divides the mask by sigmoid(init_score / temperature), which underflows float32 here "
                f"(init_score / temperature = {self.init_score / self.temperature:.4g}); use init_score / "
                "temperature > -87 (the paper's presets use 3 to 8) or normalize_soft_mask=False."
            )

    def _resolve_score_offset(self) -> None:
        if self.score_offset is None and (self.mask_type == "hard" or self.init_score is not None):
            self.score_offset = 0.0 if self.mask_type == "hard" else float(self.init_score)

    def resolve_preset(self, preset: str) -> None:
        """Fill `init_score` / `temperature`, where None, from `MFT_PRESETS[preset]`, and record `preset`."""
        init_score, temperature = MFT_PRESETS[preset]
        self.preset = preset
        self.init_score = init_score if self.init_score is None else self.init_score
        self.temperature = temperature if self.temperature is None else self.temperature
        self._resolve_score_offset()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """PEFT's config loading (also what `PeftModel.from_pretrained` and `load_adapter` call). A local folder is
        read by `read_local` and its files checked before PEFT reads the weights: a compact export, a truncated or
        pickle-only weight file, weights saved for other mask settings or scores holding NaN/inf are refused there,
        naming the file, instead of failing later or being looked up on the Hub."""
        folder = os.path.join(pretrained_model_name_or_path, subfolder or "")
        if not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
            return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        config = cls.read_local(folder, **kwargs)
        check_folder_files(config, folder)
        check_finite_weight_file(folder, action=f"load the MFT adapter in {folder}")
        # Not a field (never saved): PEFT hands the tuner only this config, and the state-dict checks name the folder.
        config._loaded_from = os.path.abspath(folder)
        return config

    @classmethod
    def read_local(cls, folder: str, **kwargs) -> "MFTConfig":
        """The config in local `folder`'s `adapter_config.json`, without the folder checks; invalid values raise
        `AdapterFileError` naming the file. A config saved before `score_scale` existed gets scale 1 and offset 0
        (its weight file holds the scores themselves)."""
        config_file = os.path.join(folder, CONFIG_NAME)
        try:
            config = super().from_pretrained(folder, **kwargs)
            if "score_scale" not in json.loads(Path(config_file).read_text()):
                config.score_scale, config.score_offset = 1.0, 0.0
        except (ValueError, TypeError) as exc:
            raise AdapterFileError(f"{config_file}: {exc}") from exc
        return config

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "MFTConfig":
        """A config with the paper's (init_score, temperature) for a backbone family.

        `name` is a preset key (`MFT_PRESETS`) or a model id of one of its families, case-insensitive:
        "Qwen/Qwen2.5-0.5B-Instruct" and "Qwen/Qwen2.5-7B" give `qwen2.5-0.5b`; "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
        `tinyllama-1.1b`; "google/gemma-7b" `gemma-2b` (Gemma 1 only; Gemma 2 and 3 are other families); "microsoft/
        phi-2" `phi-2`. Caveat: the paper tuned these values on the small model of each family and reused them
        unchanged for its 7B-14B models; for another size they are the paper's choice, not a tuned one. Other keyword
        arguments are passed to `MFTConfig`.
        """
        preset = preset_for_name(name)
        if preset is None:
            raise ValueError(
                f"Unknown MFT preset {name!r}; known presets: {sorted(MFT_PRESETS)}, also matched by model ids of "
                "their families (Qwen2.5-*, TinyLlama-*, gemma-<size>, phi-2)."
            )
        return cls(preset=preset, **kwargs)

    def _require_resolved(self) -> None:
        if self.mask_type == "soft" and (self.init_score is None or self.temperature is None):
            raise ValueError(
                f"MFTConfig(init_score={self.init_score}, temperature={self.temperature}) has no soft-mask values "
                "yet: they come from a preset when the adapter is created (get_peft_model); set them or `preset` to "
                "use the config before that."
            )

    @property
    def initial_soft_mask(self) -> float:
        """M0 = sigmoid(init_score / temperature), the paper-literal soft mask of a fresh adapter."""
        self._require_resolved()
        return 1.0 / (1.0 + math.exp(-self.init_score / self.temperature))

    @property
    def initial_trained_score(self) -> float:
        """Soft masks: the value of the trained tensor P where S = init_score (0, or init_score when P is S)."""
        self._require_resolved()
        return (self.init_score - self.score_offset) / self.score_scale

    def mask_spec(self, device: Optional[torch.device] = None) -> MaskSpec:
        """The `MaskSpec` this config gives every masked layer.

        The soft-mask normalizer is computed as the mask itself is, in float32 on `device` (the scores' device), so
        that a fresh soft mask is exactly 1 there.
        """
        if self.mask_type == "hard":
            return MaskSpec("hard", sparsity=self.sparsity, score_scale=self.score_scale)
        self._require_resolved()
        spec = MaskSpec(
            "soft", temperature=self.temperature, straight_through=self.straight_through,
            score_scale=self.score_scale, score_offset=self.score_offset,
        )
        if not self.normalize_soft_mask:
            return spec
        initial = torch.full((1,), self.initial_trained_score, dtype=torch.float32, device=device)
        return dataclasses.replace(spec, normalizer=spec.logits(initial).sigmoid_().item())


# LoraConfig arguments a user switching from LoRA may pass, with what MFT has instead.
_LORA_ONLY_ARGUMENTS = {
    "r": "MFT learns one score per weight, so it has no rank",
    "lora_alpha": "MFT has no scaling of an update; `temperature` sets how sharply scores become masks",
    "lora_dropout": "MFT has no adapter input to drop out",
    "bias": "MFT masks weight matrices only; biases stay frozen",
    "use_rslora": "MFT has no rank",
    "use_dora": "MFT has no magnitude/direction split",
    "init_lora_weights": "MFT's is `init_weights`",
    "fan_in_fan_out": "MFT reads the layer's own weight layout",
}
_dataclass_init = MFTConfig.__init__


@functools.wraps(_dataclass_init)
def _init_refusing_lora_arguments(self, *args, **kwargs):
    lora = [name for name in kwargs if name in _LORA_ONLY_ARGUMENTS]
    if lora:
        reasons = "; ".join(f"{name}: {_LORA_ONLY_ARGUMENTS[name]}" for name in lora)
        raise TypeError(
            f"MFTConfig got LoraConfig arguments {lora} ({reasons}). MFT's own: mask_type ('soft' or 'hard'), "
            "init_score and temperature (soft), sparsity (hard), targets or target_modules, score_scale."
        )
    _dataclass_init(self, *args, **kwargs)


MFTConfig.__init__ = _init_refusing_lora_arguments
