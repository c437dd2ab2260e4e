"""Saving MFT adapters atomically, and loading them with errors that name the file and the problem.

A save writes the whole adapter folder into a staging folder beside it, flushes it to disk, then puts it in place with
one rename, so a crash at any moment leaves either the previous folder or the new one, never a mixture or a truncated
file. Loading reads safetensors, or a `.bin` state dict through `torch.load(weights_only=True)` as PEFT does (no code
in the file runs), and checks, before any weight is touched, that the folder is an MFT adapter, that its config holds valid values and that its weight file is complete; PEFT's own
`PeftModel.from_pretrained` runs the same checks through `MFTConfig.from_pretrained` and `MFTModel`'s loading hook.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import pickle
import shutil
import sys
import uuid
from pathlib import Path
from typing import Collection, Iterator, Optional, Union

from peft import PeftModel
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open
import torch
from torch import nn

from .checks import SCORES_KEY, describe_modules, check_finite_state_dict
from .config import PEFT_TYPE_MFT, MFTConfig
from .errors import AdapterFileError

PathLike = Union[str, os.PathLike]

STAGING_MARKER = ".saving-"


# ---- atomic folder replacement ----------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0))
    except OSError:  # directories cannot be opened on Windows; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` (and `root` itself) to disk, deepest first."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _carry_over_other_entries(previous: Path, staging: Path, discard: Collection[str]) -> None:
    """Hard-link (or copy) into `staging` whatever `previous` holds that the new save did not write, such as a
    tokenizer saved in the same folder or a `.git` folder, so that replacing the folder loses nothing but the replaced
    files and the entries named in `discard`."""
    for entry in previous.iterdir():
        destination = staging / entry.name
        if entry.name in discard or destination.exists() or os.path.lexists(destination):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, destination, copy_function=_link_or_copy, symlinks=True)
        else:
            _link_or_copy(str(entry), str(destination))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def replace_directory(staging: Path, target: Path) -> None:
    """Put `staging` in place of `target` atomically and remove what `target` held before."""
    if not target.exists():
        os.rename(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the previous content
    else:
        # Two renames: if the process dies between them, the previous folder is intact under `previous`.
        previous = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:8]}")
        os.rename(target, previous)
        os.rename(staging, target)
        shutil.rmtree(previous)
    _fsync(target.parent)


@contextlib.contextmanager
def atomic_directory(directory: PathLike, discard: Collection[str] = ()) -> Iterator[Path]:
    """Write a folder atomically: yields an empty staging folder beside `directory`; on normal exit it replaces
    `directory` in one rename (created if absent). On an exception, or if the process dies, `directory` is untouched
    (a killed process may leave the hidden staging folder `.<name>.saving-<id>` behind; delete it at leisure).

    Entries already in `directory` that the new content does not replace (a tokenizer, other adapters' subfolders,
    hidden files) are hard-linked into the new folder, so nothing but the rewritten files changes; `discard` names
    top-level entries of the previous content to drop instead (files an earlier run of the same writer made and this
    one no longer writes, such as shards of a different count).
    """
    target = Path(directory).resolve()  # through a symlink: replace the folder it points to, keep the link
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}{STAGING_MARKER}{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        if target.is_dir():
            _carry_over_other_entries(target, staging, discard)
        fsync_tree(staging)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_adapter(model: PeftModel, directory: PathLike, is_main_process: bool = True, **save_pretrained_kwargs) -> Path:
    """`model.save_pretrained(directory, **save_pretrained_kwargs)`, atomically.

    A crash at any point of the save leaves the previous content of `directory` intact (see `atomic_directory`); scores
    holding NaN/inf are refused before anything is written (the error names the module).
    In a distributed run call it on every process with `is_main_process` set (e.g. `accelerator.is_main_process`):
    the other processes take part in PEFT's state-dict gathering and write nothing. Returns `directory` as a `Path`.
    """
    directory = Path(directory)
    if not is_main_process:
        model.save_pretrained(str(directory), is_main_process=False, **save_pretrained_kwargs)
        return directory
    with atomic_directory(directory) as staging:
        model.save_pretrained(str(staging), **save_pretrained_kwargs)
    return directory


# ---- validated loading ------------------------------------------------------------------------------------------


def check_safetensors_file(path: PathLike) -> list[str]:
    """Open `path` as safetensors without reading the tensor data; return its tensor names.

    Raises `AdapterFileError` naming the file if it is missing, truncated (shorter than its header says) or its header
    is corrupted. Tensor bytes carry no checksum in safetensors, so corruption inside the data is caught only where
    it produces NaN/inf (checked when the scores are loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such file.")
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


def check_torch_weights_file(path: PathLike) -> list[str]:
    """Open a `torch.save` state dict with `torch.load(weights_only=True)` (memory-mapped, no code run); return its
    tensor names. Raises `AdapterFileError` naming the file if it is truncated or corrupted, holds objects other than
    tensors, or is not a dict of tensors."""
    path = Path(path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
        raise AdapterFileError(f"{folder}: no such adapter folder.")
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


def load_adapter(
    model: nn.Module, folder: PathLike, adapter_name: str = "default", is_trainable: bool = False, **kwargs
) -> PeftModel:
    """Load the MFT adapter in local `folder` onto `model` with every check first; returns the `PeftModel`.

    `model` is a plain base model (the adapter is loaded as with `PeftModel.from_pretrained`) or a `PeftModel`
    (added as `adapter_name` with `load_adapter`; not activated). Errors name the file and the problem: a missing or
    non-MFT folder, invalid config values, a truncated weight file or a .bin holding more than tensors, scores whose shapes do not fit this
    base model (module and both shapes), or NaN/inf scores (module). `kwargs` go to PEFT's loader.
    """
    folder = Path(folder)
    read_adapter_config(folder)
    check_adapter_folder(folder, require_weights=True)
    if isinstance(model, PeftModel):
        model.load_adapter(str(folder), adapter_name, is_trainable=is_trainable, **kwargs)
        return model
    return PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs)


def describe_source(config: MFTConfig) -> str:
    """' (from <folder>)' for a config read by `MFTConfig.from_pretrained` from a local folder, else ''."""
    source: Optional[str] = getattr(config, "_loaded_from", None)
    return f" (from {source})" if source else ""


def check_scores_fit_model(
    model: nn.Module, config: MFTConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
) -> None:
    """Check an adapter state dict (keys already remapped by PEFT to `model`'s) before it is loaded into `model`.

    Every MFT layer of `adapter_name` must get scores, no scores may be left over for layers this model does not
    mask, each score tensor must have its layer's shape (out_features, in_features; DeepSpeed ZeRO-3's `ds_shape`
    where parameters are partitioned) and hold no NaN/inf. Raises `AdapterFileError` (`NonFiniteScoresError` for
    NaN/inf) naming the modules, both shapes, and the folder when the config was read from one.
    """
    peft_prefix, suffix = "base_model.model.", f"{SCORES_KEY}.{adapter_name}"

    def module_name(key: str) -> str:
        return key.split(SCORES_KEY)[0].removeprefix(peft_prefix)

    expected = {
        name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", ""): param
        for name, param in model.named_parameters(remove_duplicate=False)
        if name.endswith(suffix)
    }
    loaded = {key: tensor for key, tensor in state_dict.items() if SCORES_KEY in key}
    source = describe_source(config)
    made_for = f" It was trained on {config.base_model_name_or_path!r}." if config.base_model_name_or_path else ""
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
    check_finite_state_dict(loaded, action=f"load MFT adapter {adapter_name!r}", source=source)
