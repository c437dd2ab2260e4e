# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Mask Fine-Tuning (MFT) as a PEFT adapter type: `import peft_mft` registers it with PEFT.

Layout: the tuner (`config`, `mask`, `layer`, `model`, `targets`, `bnb_layout`), adapter folders (`weight_files`,
`adapter_files`, `atomic`), merged weights for weight sync (`merged_weights`), numerical checks (`finite`), errors
(`errors`); `peft_mft.training` (optimizers, Trainer helpers) and `peft_mft.tools` (analysis, model card, harden,
export, merge, the `peft-mft` command line), which load only when used.
"""

from importlib.metadata import PackageNotFoundError, version

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from .adapter_files import load_adapter, save_adapter
from .atomic import atomic_directory
from .bnb_layout import restore_standard_4bit_layouts
from .config import PEFT_TYPE_MFT, MFTConfig
from .errors import AdapterFileError, MFTInputError, NonFiniteScoresError
from .finite import check_finite_scores
from .layer import MFTLayer
from .merged_weights import merged_weights
from .model import MFTModel
from .training.callbacks import FiniteScoresCallback, Float32ScoresCallback, Standard4bitLayoutCallback
from .training.optim import create_mft_optimizer
from .training.optimizer_in_backward import OptimizerInBackward


try:
    __version__ = version("peft-mft")
except PackageNotFoundError:  # imported from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "AdapterFileError",
    "FiniteScoresCallback",
    "Float32ScoresCallback",
    "MFTConfig",
    "MFTInputError",
    "MFTLayer",
    "MFTModel",
    "NonFiniteScoresError",
    "OptimizerInBackward",
    "Standard4bitLayoutCallback",
    "atomic_directory",
    "check_finite_scores",
    "create_mft_optimizer",
    "load_adapter",
    "merged_weights",
    "restore_standard_4bit_layouts",
    "save_adapter",
    "__version__",
]

if PEFT_TYPE_MFT not in PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name="mft", config_cls=MFTConfig, model_cls=MFTModel, prefix="mft_")
