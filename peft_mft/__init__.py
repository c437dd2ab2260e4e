"""Mask Fine-Tuning (MFT) as a PEFT adapter type: `import peft_mft` registers it with PEFT."""

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from .bnb_layout import restore_standard_4bit_layouts
from .checks import FiniteScoresCallback, NonFiniteScoresError, check_finite_scores
from .config import MFT_PRESETS, PEFT_TYPE_MFT, MFTConfig
from .io import AdapterFileError, atomic_directory, load_adapter, save_adapter
from .layer import Linear, MFTLayer
from .mask import MaskSpec, masked_linear
from .model import MFTModel
from .optim import create_mft_optimizer, score_parameters
from .optimizer_in_backward import OptimizerInBackward

__all__ = [
    "MFT_PRESETS",
    "PEFT_TYPE_MFT",
    "AdapterFileError",
    "FiniteScoresCallback",
    "Linear",
    "MFTConfig",
    "MFTLayer",
    "MFTModel",
    "MaskSpec",
    "NonFiniteScoresError",
    "OptimizerInBackward",
    "atomic_directory",
    "check_finite_scores",
    "create_mft_optimizer",
    "load_adapter",
    "masked_linear",
    "restore_standard_4bit_layouts",
    "save_adapter",
    "score_parameters",
]

if PEFT_TYPE_MFT not in PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name="mft", config_cls=MFTConfig, model_cls=MFTModel, prefix="mft_")
