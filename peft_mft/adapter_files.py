"""The one reader and writer of MFT adapter folders: their file conventions, and every loading error.

An adapter folder, as `PeftModel.save_pretrained` writes it:

| file | holds |
|---|---|
| `adapter_config.json` | the `MFTConfig` as JSON |
| `adapter_model.safetensors` (or `adapter_model.bin`, `safe_serialization=False`) | one float32 score tensor (out_features, in_features) per masked layer, key `base_model.model.<module>.mft_scores`, plus `modules_to_save` weights |
| `README.md` | the model card (`peft_mft.tools.model_card`) |

Saving is atomic (`save_adapter`). Loading reads safetensors, or a `.bin` through `torch.load(weights_only=True)` as
PEFT does (no code in the file runs), and checks before any weight is touched that the folder is an MFT adapter, that
its config holds valid values, that its weight file is complete, and that the scores fit the model; plain
`PeftModel.from_pretrained` runs the same checks (through `check_loaded_config`, installed as `MFTConfig`'s load hook,
and `MFTModel`'s state-dict hook). Every error is an `AdapterFileError` naming the file and the problem.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch
from peft import PeftModel
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open
from torch import nn

from .atomic import atomic_directory
from .config import PEFT_TYPE_MFT, MFTConfig
from .errors import AdapterFileError, NonFiniteScoresError, describe_modules
from .finite import local_scores


PathLike = Union[str, os.PathLike]

SCORES_SUFFIX = ".mft_scores"  # `MFTLayer.mft_scores`: saved keys end with it, model keys add ".<adapter name>"
STATE_DICT_PREFIX = "base_model.model."  # PEFT's prefix of saved keys


def is_scores_key(key: str) -> bool:
    """True for the key of a score tensor, saved (`...q_proj.mft_scores`) or in a model (`...mft_scores.default`)."""
    return key.endswith(SCORES_SUFFIX) or f"{SCORES_SUFFIX}." in key


def module_name_of_key(key: str) -> str:
    """The masked module a score key belongs to, relative to the base model:
    'base_model.model.model.layers.0.self_attn.q_proj.mft_scores[.default]' -> 'model.layers.0.self_attn.q_proj'."""
    return key.split(SCORES_SUFFIX)[0].removeprefix(STATE_DICT_PREFIX)


# ---- saving -----------------------------------------------------------------------------------------------------


def save_adapter(model: PeftModel, directory: PathLike, is_main_process: bool = True, **save_pretrained_kwargs) -> Path:
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
            f"{folder} has no {SAFETENSORS_WEIGHTS_NAME} (nor {WEIGHTS_NAME}); found {_listing(folder)}."
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
        raise AdapterFileError(f"{path} does not hold a state dict (a dict of tensors); got {type(state_dict).__name__}.")
    return list(state_dict)


def hub_id_hint(path: PathLike) -> str:
    """For a missing local path that looks like a Hugging Face Hub id ('org/name'): why it is not fetched and how to
    get it (the tools read local folders only, so they work offline); else ''."""
    text = str(path)
    if Path(path).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return ""
    return (f"; {text!r} looks like a Hugging Face Hub id, and peft-mft reads local folders only: download it first "
            f"(huggingface-cli download {text} --local-dir {text.split('/')[-1]}) and pass that folder")


def _listing(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []


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
            f"{folder} is not a PEFT adapter folder: it has no {CONFIG_NAME} (found {_listing(folder)})."
        )
    try:
        peft_type = json.loads(config_file.read_text()).get("peft_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise AdapterFileError(f"{config_file} is not a valid JSON object: {exc}.") from exc
    if peft_type != PEFT_TYPE_MFT.value:
        raise AdapterFileError(
            f"{config_file} describes a {peft_type!r} adapter, not an MFT one; load it with peft.PeftModel.from_pretrained."
        )
    return MFTConfig.from_pretrained(str(folder))


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

    def read_all(self) -> dict[str, torch.Tensor]:
        """Every tensor of the weight file."""
        if self.weights.suffix == ".safetensors":
            with safe_open(str(self.weights), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}
        return dict(load_torch_weights(self.weights))


def check_scores_dtype(scores: dict[str, torch.Tensor], config: MFTConfig, source: str = "") -> None:
    """`AdapterFileError` naming the modules ({module: scores}) whose scores are not of `config.scores_dtype`
    (float32 unless the adapter kept them in its 16-bit base dtype): integer scores or scores of another precision
    are not what this adapter saved."""
    wrong = {name: str(tensor.dtype).removeprefix("torch.") for name, tensor in scores.items()
             if str(tensor.dtype).removeprefix("torch.") != config.scores_dtype}
    if wrong:
        shown = ", ".join(f"{name!r} ({dtype})" for name, dtype in list(wrong.items())[:5])
        raise AdapterFileError(
            f"The MFT adapter{source} has scores of the wrong dtype: {shown}; its config says {config.scores_dtype} "
            "(scores_dtype). The weight file was not written by save_pretrained for this config."
        )


# Safetensors metadata key under which writers other than PEFT's save (`peft-mft harden`) record the mask settings
# their weights are meant for: scores that are mask values mean something else under another config.
MASK_METADATA_KEY = "peft_mft_mask"


def mask_metadata(config: MFTConfig) -> dict[str, str]:
    """Safetensors metadata binding a weight file to `config`'s mask settings (`MASK_FIELDS`)."""
    return {"format": "pt", MASK_METADATA_KEY: json.dumps({name: getattr(config, name) for name in MASK_FIELDS})}


def check_weights_match_config(folder: PathLike, config: MFTConfig) -> None:
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


def check_loaded_config(config: MFTConfig, folder: str) -> None:
    """`MFTConfig.from_pretrained`'s load hook for a local folder: a compact folder, a pickle-only, truncated or
    corrupted weight file, or one written for other mask settings, is named before PEFT reads it, and the folder is
    remembered for later loading errors (`describe_source`)."""
    check_not_compact(folder)
    check_adapter_folder(folder, require_weights=False)
    check_weights_match_config(folder, config)
    config._loaded_from = os.path.abspath(folder)  # not a field, never saved


def load_adapter(
    model: nn.Module, folder: PathLike, adapter_name: str = "default", is_trainable: bool = False, **kwargs
) -> PeftModel:
    """Load the MFT adapter in local `folder` onto `model` with every check first; returns the `PeftModel`.

    `model` is a plain base model (the adapter is loaded as with `PeftModel.from_pretrained`) or a `PeftModel`
    (added as `adapter_name` with `load_adapter`; not activated). Errors name the file and the problem: a missing or
    non-MFT folder, invalid config values, a truncated weight file or a .bin holding more than tensors, scores whose shapes do not fit this
    base model (module and both shapes), or NaN/inf scores (module). `kwargs` go to PEFT's loader.

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
    return PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs)


# The fields that decide what a set of scores means: the same scores under other values give another model.
MASK_FIELDS = ("mask_type", "init_score", "temperature", "normalize_soft_mask", "straight_through", "sparsity",
               "scores_dtype", "score_scale", "score_offset")


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

    Used on the state dicts PEFT saves and loads; the message names the modules and `source`, e.g. ' (from <folder>)'.
    """
    broken = [
        module_name_of_key(key)
        for key, tensor in state_dict.items()
        if is_scores_key(key) and tensor.device.type != "meta" and not torch.isfinite(local_scores(tensor)).all()
    ]
    if broken:
        raise NonFiniteScoresError(
            f"Cannot {action}: the MFT scores of {describe_modules(broken)}{source} hold NaN or inf; the adapter is broken "
            "(diverged training or a corrupted file). Use an earlier checkpoint."
        )


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
            f"The MFT adapter{source} has scores for {describe_modules(leftover)}, which this model does not mask or does "
            f"not have: it was made for another base model.{made_for}"
        )
    missing = [module_name(key) for key in expected if key not in loaded and key.removeprefix(peft_prefix) not in loaded]
    if missing:
        raise AdapterFileError(
            f"The MFT adapter{source} has no scores for {describe_modules(missing)}, which its config masks on this model: "
            f"it was made for another base model or its file is incomplete.{made_for}"
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
