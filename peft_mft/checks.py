"""Numerical safety of MFT scores: NaN/inf detection (at save, load and merge, optionally every training step) and
the warning for soft-mask settings whose sigmoid is saturated or whose temperature is extreme."""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Optional

import torch
from torch import nn
from transformers import TrainerCallback

from .errors import MFTInputError
from .layer import MFTLayer

SCORES_KEY = ".mft_scores"

# |init_score / T| above this starts the float32 sigmoid within 5e-5 of 0 or 1: dM/dS = M(1 - M)/T is ~1e-4 times
# its value at S = 0 and masks barely move (exactly 0 beyond |S/T| ~ 17). The paper's presets reach 8.2 (Phi-2).
SATURATED_INIT_RATIO = 10.0
# A score step of 0.1 (the default learning rate) moves S/T by 0.1/T: > 10 below T = 0.01 (masks jump between 0
# and 1), < 0.001 above T = 100 (masks barely move). The paper's temperatures are 0.5-2.3.
TEMPERATURE_RANGE = (0.01, 100.0)


class NonFiniteScoresError(MFTInputError):
    """MFT scores hold NaN or inf; the message names the modules."""


def describe_modules(modules: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in modules[:limit])
    more = f" and {len(modules) - limit} more" if len(modules) > limit else ""
    return f"{shown}{more}"


def _local_scores(scores: torch.Tensor) -> torch.Tensor:
    """The part of `scores` this process holds: the local shard of an FSDP2 `DTensor`, the partition of a DeepSpeed
    ZeRO-3 parameter (whose `.data` is empty between gathers), else the tensor itself."""
    if hasattr(scores, "to_local"):
        return scores.to_local()
    if scores.numel() == 0 and hasattr(scores, "ds_tensor"):
        return scores.ds_tensor
    return scores


def nonfinite_score_modules(
    model: nn.Module, adapter_names: Optional[Iterable[str]] = None, all_processes: bool = False
) -> list[str]:
    """Names of the MFT layers of `model` whose scores (of `adapter_names`, default all) hold NaN or inf, as
    '<module name>' ('<module name> [adapter]' for adapters other than 'default'), relative to the base model.

    Each process looks at the scores it holds (its shard under FSDP2 / ZeRO-3). `all_processes=True` (every process
    must call it) combines the answers with one all-reduce, so that all processes agree. One device-side reduction
    and a single host synchronisation when everything is finite.
    """
    wanted = None if adapter_names is None else set(adapter_names)
    entries = [
        (name, adapter, _local_scores(scores))
        for name, module in model.named_modules()
        if isinstance(module, MFTLayer)
        for adapter, scores in module.mft_scores.items()
        if (wanted is None or adapter in wanted) and scores.device.type != "meta"
    ]
    if not entries:
        return []
    device = entries[0][2].device
    finite = torch.stack([torch.isfinite(scores).all().to(device) for _, _, scores in entries]).to(torch.int32)
    if all_processes and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if bool(finite.all()):
        return []
    return [
        name.removeprefix("base_model.model.") + ("" if adapter == "default" else f" [{adapter}]")
        for (name, adapter, _), flag in zip(entries, finite.tolist())
        if not flag
    ]


def check_finite_scores(
    model: nn.Module, adapter_names: Optional[Iterable[str]] = None, action: str = "continue", all_processes: bool = False
) -> None:
    """Raise `NonFiniteScoresError` naming the modules if any score of `adapter_names` (default all) is NaN/inf.

    `action` completes the message ("Cannot {action}: ..."), e.g. "merge" or "continue training". `all_processes`:
    see `nonfinite_score_modules`.
    """
    broken = nonfinite_score_modules(model, adapter_names, all_processes=all_processes)
    if broken:
        raise NonFiniteScoresError(
            f"Cannot {action}: the MFT scores of {describe_modules(broken)} hold NaN or inf. Training diverged (lower the "
            "learning rate or clip gradients) or the adapter is corrupted; resume from an earlier checkpoint."
        )


def check_finite_state_dict(state_dict: dict[str, torch.Tensor], action: str, source: str = "") -> None:
    """Raise `NonFiniteScoresError` if a score tensor (key containing '.mft_scores') of `state_dict` holds NaN/inf.

    Used on the state dicts PEFT saves and loads; the message names the module (the key up to '.mft_scores') and
    `source`, e.g. ' (from <folder>)'.
    """
    broken = [
        key.split(SCORES_KEY)[0].removeprefix("base_model.model.")
        for key, tensor in state_dict.items()
        if SCORES_KEY in key and tensor.device.type != "meta" and not torch.isfinite(_local_scores(tensor)).all()
    ]
    if broken:
        raise NonFiniteScoresError(
            f"Cannot {action}: the MFT scores of {describe_modules(broken)}{source} hold NaN or inf; the adapter is broken "
            "(diverged training or a corrupted file). Use an earlier checkpoint."
        )


def warn_if_soft_mask_saturates(init_score: float, temperature: float) -> None:
    """Warn (once per distinct setting, through `warnings`) when a soft mask cannot train well: a saturated sigmoid
    at initialisation (|init_score / temperature| > 10) or an extreme temperature (outside [0.01, 100])."""
    ratio = init_score / temperature
    if abs(ratio) > SATURATED_INIT_RATIO:
        tail = math.exp(-abs(ratio))
        initial_slope = tail / (1.0 + tail) ** 2 / temperature  # sigmoid'(x) = e^-|x| / (1 + e^-|x|)^2
        warnings.warn(
            f"MFTConfig(init_score={init_score}, temperature={temperature}): the soft mask starts saturated "
            f"(|init_score / temperature| = {abs(ratio):.3g} > {SATURATED_INIT_RATIO:g}); dM/dS = {initial_slope:.2g}, "
            "so the masks will barely train. Use a larger temperature or a smaller init_score (paper presets: "
            "MFTConfig.from_preset).",
            UserWarning,
            stacklevel=4,  # the line that created the MFTConfig
        )
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        warnings.warn(
            f"MFTConfig(temperature={temperature}) is outside [{low:g}, {high:g}]: a score update of 0.1 moves S/T by "
            f"{0.1 / temperature:.3g}, so masks will {'jump between 0 and 1' if temperature < low else 'barely move'}. "
            "The paper uses 0.5-2.3.",
            UserWarning,
            stacklevel=4,  # the line that created the MFTConfig
        )


class FiniteScoresCallback(TrainerCallback):
    """`transformers.Trainer` callback that stops training with `NonFiniteScoresError`, naming the modules, as soon as
    a score becomes NaN/inf (checked every `every_n_steps` optimizer steps, after the update), before a broken
    adapter reaches a checkpoint. Costs one pass over the scores (each process: its shard) and, in a distributed
    run, one small all-reduce per check."""

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"FiniteScoresCallback.every_n_steps must be >= 1, got {every_n_steps}.")
        self.every_n_steps = every_n_steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step % self.every_n_steps == 0:
            # Every process runs the callback; under FSDP / ZeRO-3 each holds a shard, so they agree via all-reduce.
            check_finite_scores(model, action=f"continue training after step {state.global_step}", all_processes=True)
