# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Reading and writing whole MFT adapter folders: the validated config, the weights one tensor at a time, atomic
saving, loading with every check first, and the checks of a state dict against the model it loads into.

The folder's files and their checks before loading are `peft_mft.weight_files`; plain `PeftModel.from_pretrained`
runs those through `MFTConfig.from_pretrained` and the state-dict checks here through `MFTModel`'s load hook. Every
error is an `AdapterFileError` naming the file and the problem.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import torch
from peft import PeftModel
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import safe_open
from torch import nn

from .atomic import atomic_directory
from .config import PEFT_TYPE_MFT, MFTConfig
from .errors import AdapterFileError, NonFiniteScoresError, describe_modules
from .finite import local_scores
from .weight_files import (
    MASK_FIELDS,
    SCORES_SUFFIX,
    STATE_DICT_PREFIX,
    PathLike,
    check_adapter_folder,
    check_folder_files,
    check_safetensors_file,
    check_torch_weights_file,
    hub_id_hint,
    is_scores_key,
    listing,
    load_torch_weights,
    module_name_of_key,
)


# ---- saving -----------------------------------------------------------------------------------------------------


def save_adapter(
    model: PeftModel, directory: PathLike, is_main_process: bool = True, **save_pretrained_kwargs
) -> Path:
    """`model.save_pretrained(directory, **save_pretrained_kwargs)`, atomically.

    A crash at any point of the save leaves the previous content of `directory` intact (see `atomic_directory`); scores
    holding NaN/inf are refused before anything is written (the error names the module).
    In a distributed run call it on every process with `is_main_process` set (e.g. `accelerator.is_main_process`):
    the other processes take part in PEFT's state-dict gathering and write nothing. Returns `directory` as a `Path`.

    Args:
        model: The MFT `PeftModel` to save.
        directory: The adapter folder to write (created, or replaced atomically).
        is_main_process: False on the processes of a distributed run that only take part in gathering.
        **save_pretrained_kwargs: Passed to `PeftModel.save_pretrained` (e.g. `safe_serialization`).
    """
    directory = Path(directory)
    if not is_main_process:
        model.save_pretrained(str(directory), is_main_process=False, **save_pretrained_kwargs)
        return directory
    with atomic_directory(directory) as staging:
        model.save_pretrained(str(staging), **save_pretrained_kwargs)
    return directory


# ---- loading ----------------------------------------------------------------------------------------------------


def read_adapter_config(folder: PathLike) -> MFTConfig:
    """The validated `MFTConfig` of a local adapter folder.

    Raises `AdapterFileError` naming the file when the folder does not exist, has no `adapter_config.json`, the file
    is not valid JSON, the adapter is of another PEFT type, or a value is invalid (T <= 0, sparsity outside [0, 1),
    unknown mask_type: `MFTConfig`'s own checks).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterFileError(f"{folder}: no such adapter folder{hub_id_hint(folder)}.")
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise AdapterFileError(
            f"{folder} is not a PEFT adapter folder: it has no {CONFIG_NAME} (found {listing(folder)})."
        )
    try:
        peft_type = json.loads(config_file.read_text()).get("peft_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise AdapterFileError(f"{config_file} is not a valid JSON object: {exc}.") from exc
    if peft_type != PEFT_TYPE_MFT.value:
        raise AdapterFileError(
            f"{config_file} describes a {peft_type!r} adapter, not an MFT one; load it with "
            "peft.PeftModel.from_pretrained."
        )
    config = MFTConfig.read_local(str(folder))
    check_folder_files(config, folder)
    return config


def saved_under_modules_to_save(key: str, modules_to_save) -> bool:
    """True for a saved key of a `modules_to_save` module's tensor ('base_model.model.lm_head.weight' with
    ['lm_head']); matched as PEFT matches them, by the module name or a suffix of it, on the module or one above."""
    parts = key.removeprefix(STATE_DICT_PREFIX).split(".")[:-1]
    paths = {".".join(parts[:end]) for end in range(1, len(parts) + 1)}
    return any(path == name or path.endswith(f".{name}") for name in modules_to_save or () for path in paths)


def check_declared_keys(weights: Path, config: MFTConfig, keys: list[str]) -> None:
    """`AdapterFileError` naming the tensors of a saved weight file that are neither scores nor `modules_to_save`
    weights: loading, merging or exporting them would replace base-model weights."""
    foreign = [key for key in keys
               if not is_scores_key(key) and not saved_under_modules_to_save(key, config.modules_to_save)]
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise AdapterFileError(
            f"{weights} holds tensors that are neither MFT scores nor weights of its modules_to_save "
            f"({config.modules_to_save or 'none'}): {', '.join(repr(key) for key in foreign[:5])}{more}. They would "
            "overwrite the base model's weights; remove them or save the adapter again."
        )


class AdapterFolder:
    """A checked adapter folder: its `config` and its weight file, read one tensor at a time.

    `open` checks everything `read_adapter_config` and `check_adapter_folder` check. Each `read` opens the file,
    reads one tensor and closes it (safetensors: without reading the others), so nothing stays open.
    """

    def __init__(self, folder: Path, config: MFTConfig, weights: Path, keys: list[str]):
        self.folder, self.config, self.weights, self.keys = folder, config, weights, keys

    @classmethod
    def open(cls, folder: PathLike) -> "AdapterFolder":
        folder = Path(folder)
        config = read_adapter_config(folder)
        check_adapter_folder(folder, require_weights=True)
        weights = folder / SAFETENSORS_WEIGHTS_NAME
        if weights.is_file():
            keys = check_safetensors_file(weights)
        else:
            weights = folder / WEIGHTS_NAME
            keys = check_torch_weights_file(weights)
        check_declared_keys(weights, config, keys)
        return cls(folder, config, weights, keys)

    @functools.cached_property
    def score_keys(self) -> dict[str, str]:
        """{module name: key} of the score tensors, in key order; `AdapterFileError` when there are none."""
        keys = {module_name_of_key(key): key for key in sorted(self.keys) if is_scores_key(key)}
        if not keys:
            raise AdapterFileError(f"{self.weights} holds no MFT scores (no '*{SCORES_SUFFIX}' tensor).")
        return keys

    def read(self, key: str) -> torch.Tensor:
        """The tensor `key`, on the CPU."""
        if self.weights.suffix == ".safetensors":
            with safe_open(str(self.weights), framework="pt") as handle:
                return handle.get_tensor(key)
        return load_torch_weights(self.weights)[key]

    def read_scores(self, module_name: str) -> torch.Tensor:
        """Scores of `module_name` as float32 (out_features, in_features). `AdapterFileError` for another shape or a
        dtype other than the config's `scores_dtype`, `NonFiniteScoresError` for NaN/inf."""
        tensor = self.read(self.score_keys[module_name])
        if tensor.dim() != 2:
            raise AdapterFileError(
                f"{self.weights}: the scores of {module_name!r} have shape {tuple(tensor.shape)}; expected a 2-D "
                "(out_features, in_features) matrix."
            )
        check_scores_dtype({module_name: tensor}, self.config, f" ({self.weights})")
        check_finite_state_dict({self.score_keys[module_name]: tensor}, action="read the adapter",
                                source=f" (in {self.weights})")
        return tensor.float()

def check_scores_dtype(scores: dict[str, torch.Tensor], config: MFTConfig, source: str = "") -> None:
    """`AdapterFileError` naming the modules ({module: scores}) whose scores are not of `config.scores_dtype`
    (float32 unless the adapter kept them in its 16-bit base dtype): integer scores or scores of another precision
    are not what this adapter saved."""
    wrong = {name: str(tensor.dtype).removeprefix("torch.") for name, tensor in scores.items()
             if str(tensor.dtype).removeprefix("torch.") != config.scores_dtype}
    if wrong:
        shown = ", ".join(f"{name!r} ({dtype})" for name, dtype in list(wrong.items())[:5])
        raise AdapterFileError(
            f"The MFT adapter has scores of the wrong dtype: {shown}; its config says {config.scores_dtype} "
            "(scores_dtype). The weight file was not written by save_pretrained for this config."
        )


def load_adapter(
    model: nn.Module, folder: PathLike, adapter_name: str = "default", is_trainable: bool = False, **kwargs
) -> PeftModel:
    """Load the MFT adapter in local `folder` onto `model` with every check first; returns the `PeftModel`.

    `model` is a plain base model (the adapter is loaded as with `PeftModel.from_pretrained`) or a `PeftModel`
    (added as `adapter_name` with `load_adapter`; not activated). Errors name the file and the problem: a missing or
    non-MFT folder, invalid config values, a truncated weight file or a .bin holding more than tensors, scores whose
    shapes do not fit this base model (module and both shapes), or NaN/inf scores (module). `kwargs` go to PEFT's
    loader.

    Args:
        model: A plain base model, or a `PeftModel` to add the adapter to.
        folder: A local adapter folder written by `save_pretrained`.
        adapter_name: The name to load it under; an existing adapter of that name must have the same mask settings.
        is_trainable: Load with trainable scores (to continue training).
        **kwargs: Passed to PEFT's loader.
    """
    folder = Path(folder)
    saved = read_adapter_config(folder)
    check_adapter_folder(folder, require_weights=True)
    if isinstance(model, PeftModel):
        existing = model.peft_config.get(adapter_name)
        if existing is not None:  # PEFT keeps the existing adapter's config and loads only the weights into it
            check_same_mask_config(existing, saved, folder, adapter_name)
        model.load_adapter(str(folder), adapter_name, is_trainable=is_trainable, **kwargs)
        return model
    return PeftModel.from_pretrained(
        model, str(folder), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs
    )


def check_same_mask_config(existing, saved: MFTConfig, folder: PathLike, adapter_name: str) -> None:
    """`AdapterFileError` when the adapter saved in `folder` (config `saved`) would be loaded into the existing
    adapter `adapter_name` (config `existing`) whose mask fields (`MASK_FIELDS`) differ: loading keeps the existing
    config, so the saved scores would be read under other mask settings. Names each field with both values."""
    if getattr(existing, "peft_type", None) != PEFT_TYPE_MFT:
        raise AdapterFileError(
            f"Adapter {adapter_name!r} of this model is a {getattr(existing, 'peft_type', None)!r} adapter; {folder} "
            "holds an MFT one. Load it under another adapter_name."
        )
    differing = [f"{name} {getattr(existing, name)!r} here, {getattr(saved, name)!r} in {folder}"
                 for name in MASK_FIELDS if getattr(existing, name) != getattr(saved, name)]
    if differing:
        raise AdapterFileError(
            f"Cannot load {folder} into the existing adapter {adapter_name!r}: its mask settings differ "
            f"({'; '.join(differing)}), and loading keeps the existing ones, so the saved scores would give another "
            f"model. Load it under a new adapter_name, or delete_adapter({adapter_name!r}) first."
        )


def describe_source(config: MFTConfig) -> str:
    """' (from <folder>)' for a config read by `MFTConfig.from_pretrained` from a local folder, else ''."""
    source: Optional[str] = getattr(config, "_loaded_from", None)
    return f" (from {source})" if source else ""


def check_finite_state_dict(state_dict: dict[str, torch.Tensor], action: str, source: str = "") -> None:
    """Raise `NonFiniteScoresError` if a score tensor of `state_dict` holds NaN/inf.

    Used on the state dicts PEFT saves and loads; the message names the modules and `source`, e.g. ' (in <file>)'.
    """
    broken = [
        module_name_of_key(key)
        for key, tensor in state_dict.items()
        if is_scores_key(key) and tensor.device.type != "meta" and not torch.isfinite(local_scores(tensor)).all()
    ]
    if broken:
        raise NonFiniteScoresError.of_adapter(broken, action, source)


def check_scores_fit_model(
    model: nn.Module, config: MFTConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
) -> None:
    """Check an adapter state dict (keys already remapped by PEFT to `model`'s) before it is loaded into `model`.

    Every MFT layer of `adapter_name` must get scores, no scores may be left over for layers this model does not
    mask, no tensor may name a base-model weight (only scores and `modules_to_save` weights load), each score tensor
    must have its layer's shape (out_features, in_features; DeepSpeed ZeRO-3's `ds_shape` where parameters are
    partitioned) and hold no NaN/inf. Raises `AdapterFileError` (`NonFiniteScoresError` for
    NaN/inf) naming the modules, both shapes, and the folder when the config was read from one.
    """
    peft_prefix, suffix = STATE_DICT_PREFIX, f"{SCORES_SUFFIX}.{adapter_name}"
    module_name = module_name_of_key

    expected = {
        name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", ""): param
        for name, param in model.named_parameters(remove_duplicate=False)
        if name.endswith(suffix)
    }
    loaded = {key: tensor for key, tensor in state_dict.items() if is_scores_key(key)}
    source = describe_source(config)
    made_for = f" It was trained on {config.base_model_name_or_path!r}." if config.base_model_name_or_path else ""
    # Adapter-owned tensors (scores, `modules_to_save` copies, ...) carry the adapter name in their path; a key
    # without it names a base-model weight, which PEFT would load over the base model.
    owned = {
        name
        for name, _ in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
        if f".{adapter_name}." in f"{name}."
    }
    foreign = [key.removeprefix(peft_prefix) for key in state_dict
               if not is_scores_key(key) and key not in owned and peft_prefix + key not in owned]
    if foreign:
        raise AdapterFileError(
            f"The MFT adapter{source} holds tensors that are neither MFT scores nor weights of its modules_to_save "
            f"({config.modules_to_save or 'none'}): {', '.join(repr(name) for name in foreign[:5])}"
            f"{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''}. Loading them would overwrite the base "
            "model's weights; nothing was loaded. Remove them from the weight file or save the adapter again."
        )
    leftover = [module_name(key) for key in loaded if key not in expected and peft_prefix + key not in expected]
    if leftover:
        raise AdapterFileError(
            f"The MFT adapter{source} has scores for {describe_modules(leftover)}, which this model does not mask or "
            f"does not have: it was made for another base model.{made_for}"
        )
    missing = [module_name(key) for key in expected
               if key not in loaded and key.removeprefix(peft_prefix) not in loaded]
    if missing:
        raise AdapterFileError(
            f"The MFT adapter{source} has no scores for {describe_modules(missing)}, which its config masks on this "
            f"model: it was made for another base model or its file is incomplete.{made_for}"
        )
    mismatched = []
    for key, tensor in loaded.items():
        param = expected.get(key, expected.get(peft_prefix + key))
        model_shape = tuple(getattr(param, "ds_shape", param.shape))
        if tuple(tensor.shape) != model_shape:
            mismatched.append(f"{module_name(key)!r}: {tuple(tensor.shape)} in the adapter, {model_shape} here")
    if mismatched:
        more = f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
        raise AdapterFileError(
            f"The MFT adapter{source} does not fit this model (score shapes are (out_features, in_features) of each "
            f"layer): {'; '.join(mismatched[:5])}{more}. It was made for another base model.{made_for}"
        )
    check_scores_dtype({module_name(key): tensor for key, tensor in loaded.items()}, config, source)
    check_finite_state_dict(loaded, action=f"load MFT adapter {adapter_name!r}", source=source)
