# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""NaN/inf in a model's MFT scores: found in one pass (each process: its shard), refused naming the modules."""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from .errors import NonFiniteScoresError, describe_modules
from .layer import MFTLayer


def local_scores(scores: torch.Tensor) -> torch.Tensor:
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
        (name, adapter, local_scores(scores))
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
    model: nn.Module,
    adapter_names: Optional[Iterable[str]] = None,
    action: str = "continue",
    all_processes: bool = False,
) -> None:
    """Raise `NonFiniteScoresError` naming the modules if any score of `adapter_names` (default all) is NaN/inf.

    `action` completes the message ("Cannot {action}: ..."), e.g. "merge" or "continue training". `all_processes`:
    see `nonfinite_score_modules`.

    Args:
        model: A model holding MFT layers.
        adapter_names: The adapters to check (default: all).
        action: Completes the message, 'Cannot {action}: ...'.
        all_processes: In a distributed run, agree across processes (each checks its shard; one all-reduce).
    """
    broken = nonfinite_score_modules(model, adapter_names, all_processes=all_processes)
    if broken:
        raise NonFiniteScoresError(
            f"Cannot {action}: the MFT scores of {describe_modules(broken)} hold NaN or inf. Training diverged (lower "
            "the learning rate or clip gradients) or the adapter is corrupted; resume from an earlier checkpoint."
        )
