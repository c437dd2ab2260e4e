# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The experiment harness that examples/ and benchmarks/ share: the embedded default VLM, LLaVA data, the methods
(MFT, LoRA, QLoRA, full fine-tuning) and the one builder of their configs, the Trainer set-up, evaluation and the
peak-memory measurement. Both import it (``from harness import ...``), so every script runs the same code.
"""

import logging


# bitsandbytes warns at import that an optional accelerated CPU kernel package ("kernels") is absent; it falls back
# to its own kernels, so the warning is noise in every example's output.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from .data import DataFormatError, LlavaCollator, LlavaDataset, Record, VLMProcessor, load_llava_json
from .evaluation import evaluate_vqa, normalize_answer
from .methods import METHODS, MethodArgs, PreparedModel, add_method_args, prepare_model
from .models import LoadedVLM, load_llava
from .training import TrainConfig, train_and_evaluate


__all__ = [
    "DataFormatError",
    "LlavaCollator",
    "LlavaDataset",
    "LoadedVLM",
    "METHODS",
    "MethodArgs",
    "PreparedModel",
    "Record",
    "TrainConfig",
    "VLMProcessor",
    "add_method_args",
    "evaluate_vqa",
    "load_llava",
    "load_llava_json",
    "normalize_answer",
    "prepare_model",
    "train_and_evaluate",
]
