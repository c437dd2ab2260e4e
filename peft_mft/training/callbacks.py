# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`transformers.Trainer` callbacks for MFT training."""

from __future__ import annotations

import warnings

from torch import nn
from transformers import TrainerCallback

from ..bnb_layout import restore_standard_4bit_layouts
from ..finite import check_finite_scores
from ..layer import MFTLayer


class FiniteScoresCallback(TrainerCallback):
    """`transformers.Trainer` callback that stops training with `NonFiniteScoresError`, naming the modules, as soon as
    a score becomes NaN/inf (checked every `every_n_steps` optimizer steps, after the update), before a broken
    adapter reaches a checkpoint. Costs one pass over the scores (each process: its shard) and, in a distributed
    run, one small all-reduce per check.

    Args:
        every_n_steps: Check after every this many optimizer steps (>= 1).
    """

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"FiniteScoresCallback.every_n_steps must be >= 1, got {every_n_steps}.")
        self.every_n_steps = every_n_steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step % self.every_n_steps == 0:
            # Every process runs the callback; under FSDP / ZeRO-3 each holds a shard, so they agree via all-reduce.
            check_finite_scores(model, action=f"continue training after step {state.global_step}", all_processes=True)


def restore_float32_scores(model: nn.Module) -> list[str]:
    """`MFTLayer.hold_scores_dtype` on every MFT layer of `model` (scores cast to 16 bits through `param.data` back to
    float32, exactly for a fresh adapter); returns the layers whose trained scores were widened with their 16-bit
    rounding ("adapter: module")."""
    return [f"{adapter_name}: {module_name}" for module_name, layer in model.named_modules()
            if isinstance(layer, MFTLayer) for adapter_name in layer.hold_scores_dtype()]


class Float32ScoresCallback(TrainerCallback):
    """Restores float32 scores at the end of the trainer's `__init__`, after trainers that cast trainable parameters
    to bf16 when wrapping the model (TRL's `SFTTrainer` and its siblings do so for a 4-bit or 8-bit base, as the QLoRA
    recipe wants for LoRA weights; bf16 cannot hold score updates). Optional: every MFT layer does the same before its
    next forward (`MFTLayer.hold_scores_dtype`); this only does it before the first step's forward, and warns there
    if an adapter with trained scores lost precision to the cast (create the trainer first, then load such an
    adapter)."""

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        widened = restore_float32_scores(model)
        if widened:
            warnings.warn(
                f"MFT scores of {len(widened)} layers had been cast to 16 bits after they were trained or randomly "
                f"initialised (e.g. {widened[0]}); they are float32 again but keep the 16-bit rounding. Load a "
                "trained adapter after creating the trainer to keep its exact scores.",
                stacklevel=2,
            )


class Standard4bitLayoutCallback(TrainerCallback):
    """Gives bitsandbytes 4-bit layers their standard weight layout back before every optimizer step (QLoRA, or MFT
    on a 4-bit base, trained on a CPU).

    On a CPU with AVX512-BF16, an eval-mode forward without gradients (`Trainer.evaluate`, `generate`, a validation
    callback) repacks each `Linear4bit` weight into a layout that only bitsandbytes' inference kernel reads
    (`peft_mft.bnb_layout`); that kernel has no backward, so once training resumes no gradient flows through the
    frozen 4-bit layers and the adapters upstream of them stop learning, without an error. Costs one walk over the
    modules per step; a no-op on every other model.
    """

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            restore_standard_4bit_layouts(model)
