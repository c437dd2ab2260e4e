# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""One `transformers.Trainer`-based helper shared by every example script, the comparison and the results runner."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from peft_mft import Standard4bitLayoutCallback, atomic_directory

from .answer_loss import AnswerLogitsCollator, answer_logits_loss
from .data import LlavaCollator, LlavaDataset, Record, VLMProcessor
from .evaluation import correctness_text, evaluate_vqa
from .memory import PeakMemoryCallback
from .methods import PreparedModel, merge_adapter
from .precision import bf16_kernels, emulation_reason, fast_bf16
from .run_state import ResumingTrainer, RunState, resume_point, training_loss
from .tensor_memory import TensorMemoryCallback


logger = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class TrainConfig:
    output_dir: str
    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    seed: int = 0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int | None = None  # Trainer checkpoints every N steps (None: none)
    save_total_limit: int | None = None  # checkpoints kept (None: all)
    resume: bool = False  # continue from the latest checkpoint in output_dir/trainer, if there is one
    eval_batch_size: int = 16
    max_new_tokens: int | None = None
    bf16: bool = False
    dataloader_workers: int = 0
    disable_tqdm: bool = False
    desc: str = "train"
    curve_every: int | None = None  # validation accuracy every N optimizer steps (needs curve records)


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, in seconds, and of its phases (`PHASES`): forward + backward + gradient
    clipping, ``optimizer.step()``, and the scheduler step and ``zero_grad`` after it."""

    PHASES = ("forward_backward_clip", "optimizer", "after_optimizer")

    def __init__(self):
        self.durations: list[float] = []
        self.phases: dict[str, list[float]] = {phase: [] for phase in self.PHASES}
        self._marks: list[float] = []

    def _mark(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._marks.append(time.perf_counter())

    def on_step_begin(self, args, state, control, **kwargs):
        self._marks = []
        self._mark()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._mark()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._mark()

    def on_step_end(self, args, state, control, **kwargs):
        if not self._marks:
            return
        self._mark()
        self.durations.append(self._marks[-1] - self._marks[0])
        if len(self._marks) == len(self.PHASES) + 1:  # a step the optimizer skipped has fewer marks
            for phase, start, end in zip(self.PHASES, self._marks, self._marks[1:]):
                self.phases[phase].append(end - start)

    def median_phases(self) -> dict[str, float | None]:
        return {phase: statistics.median(seconds) if seconds else None for phase, seconds in self.phases.items()}


class ValidationCurve(TrainerCallback):
    """Exact-match accuracy on held-out validation records every `every` optimizer steps (and at the last step),
    keeping a CPU copy of the trainable parameters at the best point so far.

    Ties keep the earlier checkpoint (fewer steps). `train_seconds` of a point is the summed duration of the optimizer
    steps before it (from `timer`), so evaluation time is not counted as training time.
    """

    def __init__(self, records: list[Record], processor: VLMProcessor, every: int, timer: StepTimer, **eval_kwargs):
        if every < 1:
            raise ValueError(f"curve_every must be >= 1 optimizer steps, got {every}")
        self.records, self.processor, self.every, self.timer = records, processor, every, timer
        self.eval_kwargs = eval_kwargs
        self.points: list[dict] = []
        self.best: dict | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every and step != state.max_steps:
            return
        was_training = model.training
        evaluation = evaluate_vqa(model, self.processor, self.records, desc=f"val @{step}", **self.eval_kwargs)
        accuracy = evaluation["accuracy"]
        model.train(was_training)
        point = {"step": step, "val_accuracy": accuracy, "train_seconds": round(sum(self.timer.durations), 2)}
        self.points.append(point)
        logger.info("step %d: validation accuracy %.4f", step, accuracy)
        if self.best is None or accuracy > self.best["val_accuracy"]:
            self.best = point
            trained = ((n, p) for n, p in model.named_parameters() if p.requires_grad)
            self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in trained}

    def restore_best(self, model) -> None:
        """Load the best checkpoint's trainable parameters back into `model` (mutates it)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_state.items():
                params[name].copy_(value)


def weights_size_bytes(folder: str | Path) -> int:
    """Bytes of the weight files in a saved folder (adapter or full model)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def training_arguments(prepared: PreparedModel, config: TrainConfig, out: Path) -> TrainingArguments:
    """The `TrainingArguments` of a run: every method alike, the learning rate and weight decay its own."""
    return TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=prepared.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        max_grad_norm=config.max_grad_norm,
        weight_decay=prepared.weight_decay,
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        dataloader_num_workers=config.dataloader_workers,
        bf16=config.bf16,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=config.disable_tqdm,
    )


def run_identity(prepared: PreparedModel, config: TrainConfig, with_curve: bool) -> dict:
    """What a checkpoint must match to be resumed (`harness.run_state`)."""
    model = prepared.model
    return {"method": prepared.method, "lr": prepared.lr, "trainable_parameters": prepared.trainable_parameters,
            "max_steps": config.max_steps, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
            "seed": config.seed, "curve_every": config.curve_every if with_curve else None, "bf16": config.bf16,
            "adapter_config": model.peft_config[model.active_adapter].to_dict() if prepared.is_peft else None}


def resume_checkpoint(config: TrainConfig, args: TrainingArguments, identity: dict, run_state: RunState):
    """The checkpoint to resume from (restoring `run_state`'s measurements), or None."""
    if not config.resume:
        return None
    if config.save_steps and config.save_steps % config.logging_steps:
        raise ValueError(f"resume needs save_steps ({config.save_steps}) to be a multiple of logging_steps "
                         f"({config.logging_steps}): the training loss before a resume comes from the log")
    checkpoint = resume_point(args.output_dir, identity)
    if checkpoint is not None:
        run_state.restore(checkpoint)
        logger.info("%s: resuming from %s", config.desc, checkpoint)
    return checkpoint


def training_result(prepared: PreparedModel, config: TrainConfig, trainer, train_output, run_state: RunState,
                    timer: StepTimer, memory: PeakMemoryCallback, tensor_memory: TensorMemoryCallback) -> dict:
    """The run's training measurements: loss, time per step and phase, memory."""
    resumed_at = run_state.resumed_at_steps[-1] if run_state.resumed_at_steps else None
    result = {
        "method": prepared.method,
        "lr": prepared.lr,
        "steps": config.max_steps,
        "batch_size": config.batch_size * config.grad_accum,
        "seed": config.seed,
        "trainable_parameters": prepared.trainable_parameters,
        "precision": f"bf16 autocast, {bf16_kernels()} kernels" if config.bf16 else "fp32",
        "lm_head_positions": "answers",  # harness.answer_loss; records without this key projected every position
        "train_loss": training_loss(trainer.state.log_history, resumed_at, train_output.training_loss,
                                    config.max_steps),
        "train_seconds": round(run_state.train_seconds(), 2),
        "median_step_seconds": statistics.median(timer.durations) if timer.durations else None,
        "median_phase_seconds": timer.median_phases(),
        "peak_memory_bytes": run_state.peak_bytes(),
        "peak_memory_kind": memory.kind,
        "tensor_memory": tensor_memory.by_category,
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
    }
    if run_state.resumed_at_steps:
        result["resumed_at_steps"] = run_state.resumed_at_steps
    return result


def train(prepared: PreparedModel, processor: VLMProcessor, train_records: list[Record], config: TrainConfig,
          curve_records: list[Record] | None, eval_kwargs: dict) -> tuple[dict, ValidationCurve | None, bool]:
    """Train `prepared.model` in place with `transformers.Trainer` (resuming where `config.resume` finds a
    checkpoint); returns the training measurements, the validation curve (if any) and whether this is the main
    process."""
    model, out = prepared.model, Path(config.output_dir)
    param = next(p for p in model.parameters() if p.dtype.is_floating_point)
    # logits only where the loss reads them (harness.answer_loss): the same loss, without the unused LM-head rows
    collator = AnswerLogitsCollator(LlavaCollator(processor.tokenizer.pad_token_id, padding_side="right",
                                                  pixel_dtype=param.dtype))
    args = training_arguments(prepared, config, out)
    timer, memory = StepTimer(), PeakMemoryCallback()
    tensor_memory = TensorMemoryCallback(model, prepared.optimizer)
    # a 4-bit base evaluated on a CPU must get its trainable layout back before the next step (peft_mft.bnb_layout)
    callbacks = [Standard4bitLayoutCallback(), timer, memory, tensor_memory]
    curve = None
    if curve_records and config.curve_every:
        curve = ValidationCurve(curve_records, processor, config.curve_every, timer, **eval_kwargs)
        callbacks.append(curve)
    identity = run_identity(prepared, config, curve is not None)
    run_state = RunState(identity, args.output_dir, timer, memory, tensor_memory, curve)
    callbacks.append(run_state)
    checkpoint = resume_checkpoint(config, args, identity, run_state)
    trainer = ResumingTrainer(  # a checkpoint appears complete or not at all
        model=model,
        args=args,
        train_dataset=LlavaDataset(train_records, processor),
        data_collator=collator,
        compute_loss_func=answer_logits_loss,
        optimizers=(prepared.optimizer, None),
        callbacks=callbacks,
    )
    logger.info("%s: %s, %d trainable parameters, lr %g", config.desc, prepared.method,
                prepared.trainable_parameters, prepared.lr)
    with fast_bf16() if config.bf16 else contextlib.nullcontext():
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    result = training_result(prepared, config, trainer, train_output, run_state, timer, memory, tensor_memory)
    is_main = trainer.is_world_process_zero()
    del trainer
    gc.collect()
    return result, curve, is_main


def save_trained(prepared: PreparedModel, processor: VLMProcessor, out: Path) -> dict:
    """Save the adapter (or the whole model for full fine-tuning) under `out` atomically; where and how large."""
    saved = out / ("model" if not prepared.is_peft else "adapter")
    with atomic_directory(saved) as staging:  # a crash mid-save leaves the previous save intact
        prepared.model.save_pretrained(staging)
        if not prepared.is_peft:
            processor.tokenizer.save_pretrained(staging)
            processor.image_preprocessor.save_pretrained(staging)
    return {"saved_to": str(saved), "saved_bytes": weights_size_bytes(saved)}


def train_and_evaluate(
    prepared: PreparedModel,
    processor: VLMProcessor,
    train_records: list[Record],
    eval_records: list[Record] | None,
    config: TrainConfig,
    save: bool = True,
    check_merged: bool = True,
    curve_records: list[Record] | None = None,
) -> dict:
    """Train ``prepared.model`` with `transformers.Trainer`, then (if ``eval_records``) measure exact-match
    accuracy, save the adapter (or the full model for ``full``) under ``output_dir``, merge the adapter and measure
    the merged model's accuracy again.

    With ``curve_records`` and ``config.curve_every``, validation accuracy is measured every ``curve_every`` steps
    (``result["curve"]``) and ``eval_records`` are also scored at the best validation point
    (``result["best_checkpoint"]``); the saved adapter and the merge check are those of the last step.

    Returns a JSON-able dict of metrics; with ``eval_records``, ``answers_correct`` (and the same in
    ``best_checkpoint``) holds each question's correctness as `correctness_text`. Mutates ``prepared.model``: trained
    in place, and with ``check_merged`` (PEFT methods) its adapter is merged away, so do not use it afterwards."""
    set_seed(config.seed)
    if config.bf16 and bf16_kernels() == "emulated":
        logger.info("%s: %s", config.desc, emulation_reason())
    model, out = prepared.model, Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    eval_kwargs = dict(batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
                       disable_tqdm=config.disable_tqdm)
    result, curve, is_main = train(prepared, processor, train_records, config, curve_records, eval_kwargs)
    if not is_main:  # under `accelerate launch`, rank 0 alone evaluates and saves
        return result

    if curve is not None:
        result["curve"] = curve.points
    if eval_records:
        evaluation = evaluate_vqa(model, processor, eval_records, desc=f"eval {prepared.method}", **eval_kwargs)
        result.update(accuracy=evaluation["accuracy"], eval_questions=evaluation["total"],
                      answers_correct=correctness_text(evaluation["predictions"]))
        _write_json(out / "predictions.json", evaluation["predictions"])
    if save:
        result.update(save_trained(prepared, processor, out))
    if eval_records and curve is not None:
        curve.restore_best(model)
        at_best = evaluate_vqa(model, processor, eval_records, desc=f"eval {prepared.method} best", **eval_kwargs)
        result["best_checkpoint"] = {**curve.best, "accuracy": at_best["accuracy"],
                                     "answers_correct": correctness_text(at_best["predictions"])}
        _write_json(out / "predictions-best.json", at_best["predictions"])
    if eval_records and check_merged and prepared.is_peft:
        result.update(merge_check(model, processor, eval_records, evaluation, prepared.method, eval_kwargs))
    _write_json(out / "metrics.json", result)
    return result


def merge_check(model, processor: VLMProcessor, eval_records: list[Record], evaluation: dict, method: str,
                eval_kwargs: dict) -> dict:
    """Merge the adapter away and evaluate again: the merged model must answer as the adapter model did."""
    merged = merge_adapter(model)
    merged_eval = evaluate_vqa(merged, processor, eval_records, desc=f"eval {method} merged", **eval_kwargs)
    same = [a["prediction"] == b["prediction"] for a, b in zip(evaluation["predictions"], merged_eval["predictions"])]
    return {"merged_accuracy": merged_eval["accuracy"], "merged_identical_predictions": all(same),
            "merged_differing_predictions": len(same) - sum(same)}


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1))
