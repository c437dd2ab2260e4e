# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`transformers.Trainer` checkpoints that appear complete or not at all.

`Trainer` writes `checkpoint-N/` file by file (adapter, optimizer, scheduler, RNG states, trainer state). A crash in
between leaves a partial folder that `train(resume_from_checkpoint=True)` then picks as the latest. Here each
checkpoint is written into the hidden folder `.checkpoint-N.saving/` (ignored by `get_last_checkpoint`), flushed to
disk and renamed to `checkpoint-N/` in one step; only then are old checkpoints rotated out. Resuming refuses a
checkpoint whose MFT mask settings differ from the model's adapter (Trainer would load its scores under the model's).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from peft.utils.constants import CONFIG_NAME
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..adapter_files import check_same_mask_config, read_adapter_config
from ..atomic import fsync_tree, replace_directory
from ..config import PEFT_TYPE_MFT


def staging_name(name: str) -> str:
    """The hidden name `name` (a checkpoint folder) is written under until it is complete."""
    return f".{name}.saving"


class AtomicCheckpointMixin:
    """Mixin for `transformers.Trainer` (or a subclass such as TRL's `SFTTrainer`): atomic checkpoints.

    Works in distributed runs (every process writes its RNG state into the same staging folder; the saving process
    renames it after a barrier). With `push_to_hub` the Trainer's own, non-atomic checkpointing is used, since
    uploads may still read the folder after the save returns. The final `trainer.save_model()` is Trainer's plain
    `save_pretrained`; write the final adapter with `peft_mft.save_adapter` to have it atomic too.
    """

    _checkpoint_staging_root = None

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written, Trainer's `run_dir/checkpoint-N` resolves into the staging folder.
        if self._checkpoint_staging_root is not None:
            return self._checkpoint_staging_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        if self.args.push_to_hub:
            return super()._save_checkpoint(model, trial)
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, staging_name(name))
        if self.args.should_save and os.path.exists(staging_root):
            shutil.rmtree(staging_root)  # left by a process killed while writing this same step
        self.accelerator.wait_for_everyone()
        save_total_limit = self.args.save_total_limit
        self._checkpoint_staging_root, self.args.save_total_limit = staging_root, None  # rotate once it is in place
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging_root, self.args.save_total_limit = None, save_total_limit
        best = self.state.best_model_checkpoint
        if best is not None and Path(best).parent == Path(staging_root):
            self.state.best_model_checkpoint = os.path.join(run_dir, Path(best).name)
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            staged = Path(staging_root) / name
            self.state.save_to_json(str(staged / TRAINER_STATE_NAME))  # with the final best_model_checkpoint path
            fsync_tree(staged)
            replace_directory(staged, Path(run_dir) / name)
            shutil.rmtree(staging_root)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()


    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Trainer loads the checkpoint's adapter into the model's existing one, keeping the model's config: refuse a
        # checkpoint whose mask settings differ, before anything is loaded.
        model = model if model is not None else self.model
        config_file = Path(resume_from_checkpoint) / CONFIG_NAME
        configs = getattr(model, "peft_config", {})
        active = getattr(model, "active_adapter", None)
        if config_file.is_file() and active in configs and configs[active].peft_type == PEFT_TYPE_MFT:
            check_same_mask_config(configs[active], read_adapter_config(resume_from_checkpoint),
                                   resume_from_checkpoint, active)
        super()._load_from_checkpoint(resume_from_checkpoint, model)


class AtomicCheckpointTrainer(AtomicCheckpointMixin, Trainer):
    """`transformers.Trainer` with atomic checkpoints (see `AtomicCheckpointMixin`); a drop-in replacement."""
