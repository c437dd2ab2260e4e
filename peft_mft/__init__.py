"""Mask Fine-Tuning (MFT) as a PEFT adapter type: `import peft_mft` registers it with PEFT."""

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from .config import MFT_PRESETS, PEFT_TYPE_MFT, MFTConfig
from .layer import Linear, MFTLayer
from .mask import MaskSpec, masked_linear
from .model import MFTModel
from .optim import create_mft_optimizer, score_parameters

__all__ = [
    "MFT_PRESETS",
    "PEFT_TYPE_MFT",
    "Linear",
    "MFTConfig",
    "MFTLayer",
    "MFTModel",
    "MaskSpec",
    "create_mft_optimizer",
    "masked_linear",
    "score_parameters",
]

if PEFT_TYPE_MFT not in PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name="mft", config_cls=MFTConfig, model_cls=MFTModel, prefix="mft_")
