"""Shared code of the examples: embedded default VLM, LLaVA data, methods, Trainer helper, evaluation.

Benchmarks import from here too (``from examples.common import ...``) so every script runs the same code.
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
