# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Merging an MFT adapter into its base model and writing a plain transformers model folder (`peft-mft merge`)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from ..adapter_files import load_adapter
from ..atomic import PathLike
from ..errors import MFTInputError
from ..weight_files import hub_id_hint
from .output_folder import check_output_folder, command_output


# Files whose presence means the base folder holds a tokenizer or processor for the merged model to carry.
_PREPROCESSING_FILES = ("tokenizer_config.json", "tokenizer.json", "preprocessor_config.json", "processor_config.json")


def load_base_model(base: PathLike, dtype: str = "auto") -> torch.nn.Module:
    """The transformers model saved in folder `base`, as the class its config names; `dtype` 'auto' keeps the saved
    dtype, else 'float32', 'bfloat16' or 'float16'. `MFTInputError` names a missing folder or an unknown class."""
    base_dir = Path(base)
    if not (base_dir / "config.json").is_file():
        what = "has no config.json" if base_dir.is_dir() else f"does not exist{hub_id_hint(base)}"
        raise MFTInputError(f"base model folder {base} {what}; give a folder written by save_pretrained.")
    config = transformers.AutoConfig.from_pretrained(base)
    architectures = getattr(config, "architectures", None) or []
    model_class = next((getattr(transformers, name) for name in architectures if hasattr(transformers, name)), None)
    if model_class is None:
        raise MFTInputError(f"base model {base} names no transformers class (config.architectures = {architectures}).")
    return model_class.from_pretrained(base, dtype=dtype if dtype == "auto" else getattr(torch, dtype))


def merge_to_folder(
    base: PathLike, adapter: PathLike, output: PathLike, dtype: str = "auto", progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Load the base model in folder `base`, apply the MFT adapter in folder `adapter`, write the merged model.

    The output is a plain transformers model folder (safetensors weights `W * M`, config, and the base folder's
    tokenizer or processor, written by its own `save_pretrained`) that loads without peft or peft_mft. Written
    atomically, following the rule of `peft_mft.tools.output_folder` (never an input, never a non-empty folder of
    something else unless `overwrite`). `dtype`: 'auto' keeps the base's saved dtype, else 'float32', 'bfloat16' or
    'float16'. Bad input raises `MFTInputError` (`AdapterFileError` for the adapter).
    """
    checked = check_output_folder(output, [base, adapter], "merge", overwrite)  # before loading the model
    base_dir = Path(base)
    model = load_adapter(load_base_model(base, dtype), adapter)
    merged = model.merge_and_unload(progressbar=progress)
    preprocessing = None
    if any((base_dir / name).is_file() for name in _PREPROCESSING_FILES):
        # AutoProcessor gives the processor of a VLM and the tokenizer of a text model; a broken one fails loudly
        preprocessing = transformers.AutoProcessor.from_pretrained(base)
    with command_output(output, [base, adapter], "merge", overwrite, checked) as staging:
        merged.save_pretrained(staging)
        if preprocessing is not None:
            preprocessing.save_pretrained(staging)
    return Path(output)
