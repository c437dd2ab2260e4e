# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The files of an MFT adapter folder and the checks made on them before anything is loaded.

An adapter folder, as `PeftModel.save_pretrained` writes it:

- `adapter_config.json`: the `MFTConfig` as JSON;
- `adapter_model.safetensors` (or `adapter_model.bin`, `safe_serialization=False`): one float32 score tensor
  (out_features, in_features) per masked layer, key `base_model.model.<module>.mft_scores`, plus the
  `modules_to_save` weights;
- `README.md`: PEFT's model card (`peft-mft card` adds the MFT section, `peft_mft.tools.model_card`).

A `.bin` is read through `torch.load(weights_only=True)` as PEFT reads it (no code in the file runs). These checks
need no config class, so `MFTConfig.from_pretrained` runs them before PEFT touches a weight; `peft_mft.adapter_files`
reads and writes whole folders on top of them. Every error is an `AdapterFileError` naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open

from .atomic import PathLike
from .errors import AdapterFileError, NonFiniteScoresError


SCORES_SUFFIX = ".mft_scores"  # `MFTLayer.mft_scores`: saved keys end with it, model keys add ".<adapter name>"
STATE_DICT_PREFIX = "base_model.model."  # PEFT's prefix of saved keys


def is_scores_key(key: str) -> bool:
    """True for the key of a score tensor, saved (`...q_proj.mft_scores`) or in a model (`...mft_scores.default`)."""
    return key.endswith(SCORES_SUFFIX) or f"{SCORES_SUFFIX}." in key


def module_name_of_key(key: str) -> str:
    """The masked module a score key belongs to, relative to the base model:
    'base_model.model.model.layers.0.self_attn.q_proj.mft_scores[.default]' -> 'model.layers.0.self_attn.q_proj'."""
    return key.split(SCORES_SUFFIX)[0].removeprefix(STATE_DICT_PREFIX)


# The fields that decide what a set of scores means: the same scores under other values give another model.
MASK_FIELDS = ("mask_type", "init_score", "temperature", "normalize_soft_mask", "straight_through", "sparsity",
               "scores_dtype", "score_scale", "score_offset")


def check_safetensors_file(path: PathLike) -> list[str]:
    """Open `path` as safetensors without reading the tensor data; return its tensor names.

    Raises `AdapterFileError` naming the file if it is missing, truncated (shorter than its header says) or its header
    is corrupted. Tensor bytes carry no checksum in safetensors, so corruption inside the data is caught only where
    it produces NaN/inf (checked when the scores are loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path}: {describe_non_file(path) if os.path.lexists(path) else 'no such file'}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise AdapterFileError(
            f"{path} is not a complete safetensors file ({exc}); it is truncated or corrupted, e.g. by an "
            "interrupted save. Restore it from a checkpoint or save the adapter again (peft_mft.save_adapter writes "
            "atomically)."
        ) from exc


def check_adapter_folder(folder: PathLike, require_weights: bool = True) -> None:
    """Check a local adapter folder before PEFT loads it: its weights are in `adapter_model.safetensors`, or in the
    `adapter_model.bin` that `save_pretrained(safe_serialization=False)` writes, and that file is complete.
    `require_weights=False` accepts a folder with no weight file at all (a config saved alone). Raises
    `AdapterFileError` naming the file.

    A `.bin` file is read as PEFT reads it, with `torch.load(weights_only=True)`: tensors and plain containers only,
    so no code in the file runs; a file holding anything else is refused.
    """
    folder = Path(folder)
    weights = folder / SAFETENSORS_WEIGHTS_NAME
    for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME):
        if os.path.lexists(folder / name) and not (folder / name).is_file():
            raise AdapterFileError(
                f"{folder / name} cannot be read as a weight file: {describe_non_file(folder / name)}."
            )
    if weights.is_file():
        check_safetensors_file(weights)
        return
    if (folder / WEIGHTS_NAME).is_file():
        check_torch_weights_file(folder / WEIGHTS_NAME)
        return
    if require_weights:
        raise AdapterFileError(
            f"{folder} has no {SAFETENSORS_WEIGHTS_NAME} (nor {WEIGHTS_NAME}); found {listing(folder)}."
        )


def describe_non_file(path: Path) -> str:
    """What `path`, which exists (perhaps as a broken link) but is not a regular file, is instead."""
    if path.is_symlink():
        target = os.readlink(path)
        if not path.exists():
            return f"it is a symbolic link to {target!r}, which does not exist"
        return f"it is a symbolic link to {target!r}, which {describe_non_file(path.resolve()).removeprefix('it ')}"
    if path.is_dir():
        return "it is a folder"
    return "it is a device, socket or pipe, not a regular file"


def load_torch_weights(path: PathLike) -> object:
    """`torch.load(path, weights_only=True)` on the CPU: memory-mapped for the zip format `torch.save` writes, read
    whole for the legacy (pre-1.6, `_use_new_zipfile_serialization=False`) format, which cannot be mapped."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def check_torch_weights_file(path: PathLike) -> list[str]:
    """Open a `torch.save` state dict with `torch.load(weights_only=True)` (no code run; `load_torch_weights`); return
    its tensor names. Raises `AdapterFileError` naming the file if it is truncated or corrupted, holds objects other
    than tensors, or is not a dict of tensors."""
    path = Path(path)
    try:
        state_dict = load_torch_weights(path)
    except pickle.UnpicklingError as exc:
        raise AdapterFileError(
            f"{path} holds objects other than tensors, which torch.load(weights_only=True) refuses to unpickle (that "
            f"could run code); it was not written by save_pretrained. ({' '.join(str(exc).split())[:200]})"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise AdapterFileError(
            f"{path} is not a complete torch.save file ({' '.join(str(exc).split())[:200]}); it is truncated or "
            "corrupted, e.g. by an interrupted save. Restore it from a checkpoint or save the adapter again."
        ) from exc
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise AdapterFileError(f"{path} does not hold a state dict (a dict of tensors); got "
                               f"{type(state_dict).__name__}.")
    return list(state_dict)


def hub_id_hint(path: PathLike) -> str:
    """For a missing local path that looks like a Hugging Face Hub id ('org/name'): why it is not fetched and how to
    get it (the tools read local folders only, so they work offline); else ''."""
    text = str(path)
    if Path(path).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return ""
    return (f"; {text!r} looks like a Hugging Face Hub id, and peft-mft reads local folders only: download it first "
            f"(huggingface-cli download {text} --local-dir {text.split('/')[-1]}) and pass that folder")


def listing(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []


# Safetensors metadata key under which writers other than PEFT's save (`peft-mft harden`) record the mask settings
# their weights are meant for: scores that are mask values mean something else under another config.
MASK_METADATA_KEY = "peft_mft_mask"


def mask_metadata(config) -> dict[str, str]:
    """Safetensors metadata binding a weight file to `config`'s mask settings (`MASK_FIELDS`)."""
    return {"format": "pt", MASK_METADATA_KEY: json.dumps({name: getattr(config, name) for name in MASK_FIELDS})}


def check_weights_match_config(folder: PathLike, config) -> None:
    """`AdapterFileError` when `folder`'s safetensors weights record mask settings (`mask_metadata`) other than
    `config`'s: the config and the weights come from different saves."""
    weights = Path(folder) / SAFETENSORS_WEIGHTS_NAME
    if not weights.is_file():
        return
    with safe_open(str(weights), framework="pt") as handle:
        recorded = (handle.metadata() or {}).get(MASK_METADATA_KEY)
    if recorded is None:
        return
    differing = [f"{name} {value!r} in the weights, {getattr(config, name)!r} in the config"
                 for name, value in json.loads(recorded).items() if getattr(config, name, None) != value]
    if differing:
        raise AdapterFileError(
            f"{folder}: {SAFETENSORS_WEIGHTS_NAME} was written for other mask settings than {CONFIG_NAME} holds "
            f"({'; '.join(differing)}); the two files come from different saves. Write the folder again."
        )


COMPACT_MARKER_NAME = "mft_compact.json"  # `peft-mft export`'s metadata: the folder holds packed masks, not scores


def check_not_compact(folder: PathLike) -> None:
    """`AdapterFileError` for a compact folder (`peft-mft export`'s output), which holds packed masks that only
    `load_compact_adapter` reads: PEFT would find no adapter weights there and look for them on the Hub."""
    folder = Path(folder)
    if (folder / COMPACT_MARKER_NAME).is_file() and not any(
        (folder / name).is_file() for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)
    ):
        raise AdapterFileError(
            f"{folder} is a compact MFT adapter (packed masks for inference, written by `peft-mft export`), not one "
            "PeftModel.from_pretrained reads. Load it with peft_mft.tools.export.load_compact_adapter(base_model, "
            f"{str(folder)!r})."
        )


def check_folder_files(config, folder: PathLike) -> None:
    """The cheap checks of a local adapter folder whose config is `config`: a compact folder, a pickle-only,
    truncated or corrupted weight file (headers only), or weights written for other mask settings is refused with an
    `AdapterFileError` naming the file."""
    check_not_compact(folder)
    check_adapter_folder(folder, require_weights=False)
    check_weights_match_config(folder, config)


def check_finite_weight_file(folder: PathLike, action: str) -> None:
    """`NonFiniteScoresError` naming the modules whose saved scores in `folder` hold NaN or inf, and the file; reads
    one score tensor at a time (memory-mapped). A folder without a weight file passes."""
    for weights in (Path(folder) / SAFETENSORS_WEIGHTS_NAME, Path(folder) / WEIGHTS_NAME):
        if weights.is_file():
            break
    else:
        return
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), framework="pt") as handle:
            broken = [module_name_of_key(key) for key in handle.keys()
                      if is_scores_key(key) and not torch.isfinite(handle.get_tensor(key)).all()]
    else:
        broken = [module_name_of_key(key) for key, tensor in load_torch_weights(weights).items()
                  if is_scores_key(key) and not torch.isfinite(tensor).all()]
    if broken:
        raise NonFiniteScoresError.of_adapter(broken, action, f" (in {weights})")
