"""`transformers.Trainer` callbacks for MFT training."""

from __future__ import annotations

from transformers import TrainerCallback

from ..finite import check_finite_scores


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
