# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Resuming an interrupted training run of `harness.training` as if it had never stopped.

A `Trainer` checkpoint restores the trainable weights, the optimizer, the schedule, the RNG streams and the data
order. A run of `train_and_evaluate` also measures as it goes: step times, the validation curve and the trainable
parameters at its best point, peak memory, the tensor memory of one step, wall time. `RunState` exports those into
each checkpoint's ``trainer_state.json`` (Trainer writes it inside the atomic checkpoint) and keeps the curve's best
parameters in ``curve-best-step-N.safetensors`` beside the checkpoints; `resume_point` finds the checkpoint to resume
from and `RunState.restore` puts the measurements back, so a resumed run reports as one run, plus the steps it was
resumed at (``resumed_at_steps``).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from peft_mft.atomic import atomic_file
from peft_mft.training.trainer import AtomicCheckpointTrainer, staging_name


BEST_STATE_PREFIX = "curve-best-step-"


def best_state_file(folder: Path, step: int) -> Path:
    """Where the curve's best trainable parameters of optimizer step `step` are kept (fp32/bf16 CPU tensors)."""
    return folder / f"{BEST_STATE_PREFIX}{step}.safetensors"


def json_identity(fields: dict) -> dict:
    """`fields` as they read back from JSON (tuples as lists, sets as sorted lists), so a saved identity compares
    equal to the one it was made from."""
    return json.loads(json.dumps(fields, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))


def resume_point(trainer_dir: str | Path, identity: dict) -> Path | None:
    """The latest complete checkpoint under `trainer_dir` written by a run with the same `identity` (method, lr,
    steps, seed, ...), or None when there is none to resume. A checkpoint of another run raises ValueError naming it
    and the field that differs: resuming it would mix two runs."""
    if not Path(trainer_dir).is_dir() or (last := get_last_checkpoint(str(trainer_dir))) is None:
        return None
    state = json.loads((Path(last) / "trainer_state.json").read_text())
    saved = state.get("stateful_callbacks", {}).get(RunState.__name__, {}).get("attributes", {}).get("identity")
    if saved is None:
        raise ValueError(f"{last} holds no run state of harness.training (written by another trainer?); move it "
                         "away or choose another output folder to start this run afresh")
    identity = json_identity(identity)
    differing = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if differing:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r}, this run {identity.get(k)!r}" for k in differing)
        raise ValueError(f"{last} belongs to another run ({detail}); move it away or choose another output folder")
    return Path(last)


class RunState(TrainerCallback, ExportableState):
    """The measurements of a `train_and_evaluate` run that its checkpoints must carry (see the module docstring).

    `identity`: JSON-able fields that must match for a checkpoint to be resumed. `timer`, `memory`, `tensor_memory`
    and `curve` are the run's `StepTimer`, `PeakMemoryCallback`, `TensorMemoryCallback` and `ValidationCurve` (or
    None); `restore` mutates them. Place it after `curve` in the callback list, so a new best point is seen on the
    step it is measured.
    """

    def __init__(self, identity: dict, folder: str | Path, timer, memory, tensor_memory, curve=None):
        self.identity, self.folder = json_identity(identity), Path(folder)
        self.timer, self.memory, self.tensor_memory, self.curve = timer, memory, tensor_memory, curve
        self.resumed_at_steps: list[int] = []
        self.earlier_peak_bytes = 0  # peak memory of the segments before this one
        self.earlier_train_seconds = 0.0  # wall time of train() in those segments, up to their last checkpoint
        self._segment_start = time.time()
        self._best_written: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._segment_start = time.time()

    def train_seconds(self) -> float:
        """Wall seconds of ``Trainer.train()`` over every segment (work lost after a checkpoint is not counted)."""
        return self.earlier_train_seconds + time.time() - self._segment_start

    def peak_bytes(self) -> int:
        return max(self.earlier_peak_bytes, self.memory.peak_bytes or 0)

    def on_step_end(self, args, state, control, **kwargs):
        best = self.curve.best if self.curve is not None else None
        if best is None or best["step"] == self._best_written or not state.is_world_process_zero:
            return
        # written when found: the checkpoint that records this best point may be saved many steps later
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(best_state_file(self.folder, best["step"])) as staging:
            save_file({n: t.contiguous() for n, t in self.curve.best_state.items()}, str(staging))
        self._best_written = best["step"]

    def on_save(self, args, state, control, **kwargs):
        # the checkpoint now in place names the current best point; older best files can no longer be resumed
        if not state.is_world_process_zero:
            return
        for path in self.folder.glob(f"{BEST_STATE_PREFIX}*.safetensors"):
            if path != best_state_file(self.folder, self._best_written or -1):
                path.unlink()

    def state(self) -> dict:
        """Called by `Trainer._save_checkpoint` before the checkpoint is renamed into place (JSON-able)."""
        return {"args": {}, "attributes": {
            "identity": self.identity,
            "resumed_at_steps": self.resumed_at_steps,
            "peak_memory_bytes": max(self.earlier_peak_bytes, self.memory.memory.read()),
            "train_seconds": self.train_seconds(),
            "step_durations": self.timer.durations,
            "step_phases": self.timer.phases,
            "tensor_memory": self.tensor_memory.by_category,
            "curve_points": self.curve.points if self.curve is not None else None,
            "curve_best": self.curve.best if self.curve is not None else None,
        }}

    def restore(self, checkpoint: Path) -> None:
        """Put back the measurements saved with `checkpoint` (mutates this object and the callbacks it holds)."""
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        attributes = saved["stateful_callbacks"][RunState.__name__]["attributes"]
        self.resumed_at_steps = attributes["resumed_at_steps"] + [saved["global_step"]]
        self.earlier_peak_bytes = attributes["peak_memory_bytes"]
        self.earlier_train_seconds = attributes["train_seconds"]
        self.timer.durations = list(attributes["step_durations"])
        self.timer.phases = {phase: list(v) for phase, v in attributes["step_phases"].items()}
        self.tensor_memory.by_category = attributes["tensor_memory"]
        if self.curve is not None and attributes["curve_best"] is not None:
            self.curve.points = list(attributes["curve_points"])
            self.curve.best = attributes["curve_best"]
            path = best_state_file(self.folder, self.curve.best["step"])
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: the curve's best parameters of the checkpoint "
                                        f"{checkpoint}; without them this run cannot resume")
            self.curve.best_state = load_file(str(path))
            self._best_written = self.curve.best["step"]


class ResumingTrainer(AtomicCheckpointTrainer):
    """`AtomicCheckpointTrainer` that resumes full fine-tuning with every weight in place.

    `Trainer` resumes a full model by `load_state_dict` on the saved file's keys, but transformers 5 saves some models
    (LLaVA) under their 4.x key names and maps them back only in `from_pretrained`: that load matches no key and only
    warns, so training would go on from the base weights. Full models are reloaded through `from_pretrained` here,
    and every weight must match; adapters resume as in `Trainer`.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        model = model if model is not None else self.model
        if hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(p for p in model.parameters() if p.dtype.is_floating_point).dtype
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
        model.load_state_dict(saved.state_dict(), strict=True)


def training_loss(log_history: list[dict], resumed_at: int | None, segment_loss: float, max_steps: int) -> float:
    """Mean training loss per optimizer step over the whole run. `Trainer` reports the mean over the steps after the
    last resume only (`segment_loss`); the steps before come from the logged losses (each the mean over its logging
    interval), so the resume step must be a logging step."""
    if resumed_at is None:
        return segment_loss
    earlier, last_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry["step"] <= resumed_at:
            earlier += entry["loss"] * (entry["step"] - last_step)
            last_step = entry["step"]
    if last_step != resumed_at:
        raise ValueError(f"resumed at step {resumed_at}, but the last logged loss before it is at step {last_step}: "
                         "save checkpoints at multiples of logging_steps")
    return (earlier + segment_loss * (max_steps - resumed_at)) / max_steps


def remove_resume_files(trainer_dir: str | Path) -> None:
    """Delete what a finished run wrote under `trainer_dir` to resume from (``checkpoint-N`` folders,
    ``curve-best-step-N.safetensors`` files and the hidden staging copies of either), so that a later run there
    starts afresh; nothing else in the folder is touched."""
    written = ((re.compile(rf"{PREFIX_CHECKPOINT_DIR}-\d+"), True),  # (name, is a folder)
               (re.compile(rf"{BEST_STATE_PREFIX}\d+\.safetensors"), False))
    for path in Path(trainer_dir).iterdir():
        # the entry itself, or the file or folder it is the staging copy of
        for name in (path.name, path.name[1:].removesuffix(".saving")):
            if path.name in (name, staging_name(name)) and any(
                    pattern.fullmatch(name) and path.is_dir() == is_dir for pattern, is_dir in written):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                break
