# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Training-step cost of MFT against LoRA, QLoRA and full fine-tuning, on the same model, batch and sequence length.

    python -m benchmarks.train_step                                  # embedded SmolLM2-135M VLM, CPU, every variant
    python -m benchmarks.train_step --methods mft,full --steps 5      # a subset
    python -m benchmarks.train_step --model llava-hf/llava-interleave-qwen-0.5b-hf --device cuda
    python -m benchmarks.train_step --accuracy-steps 32 --eval-samples 400 \
        --methods full,mft,mft+bf16-base+adamw8bit+gc+step-in-backward

Each variant (see `benchmarks.variants`: `METHOD[+OPTION...]`) runs in a fresh Python process, so its peak memory
is its own. Per variant: optimizer step time (forward + backward + `optimizer.step()` + `zero_grad`, after warm-up;
median, interquartile range, min, max), live tensor bytes at the peak of one more step by category
(`harness.tensor_memory`: the primary memory figure), peak memory after warm-up (CPU: resident-set high-water mark,
with the checkpoint's memory-mapped pages dropped after set-up so that weights it replaced do not count; CUDA: max
allocated), trainable parameters, optimizer-state bytes, adapter bytes on disk (and compact MFT formats: bytes, mask
error, logit drift on the batch), merge time.
Every figure is also given as a ratio to `full`, so runs on noisy machines compare. Writes `train_step.json` and
`train_step.md` under `--out`; `--accuracy-steps N` instead trains each variant N steps with the examples' Trainer
helper, as `python -m examples.compare` trains each method (same data order, seed, schedule; but float32, like the
timed loop, where compare defaults to bf16 autocast), and measures exact-match accuracy on easy-vqa test questions
(`memory_accuracy.json` / `.md`), with each question's correctness for paired tests (`benchmarks.accuracy_seeds`).
The report is rewritten after every variant; `--resume` keeps the finished variants of the one already in `--out`
(same setup) and runs only the rest, so an interrupted long run continues.

The batch: the first `--batch-size` records of the training data (default: easy-vqa, as in the examples), encoded by
the examples' processor, right-padded (or cut) to `--seq-len` tokens. No gradient clipping or scheduler in the timed
loop.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.answer_loss import answer_logits_loss, answer_positions
from harness.memory import PeakMemory, rss_bytes
from harness.report_files import check_report_files
from harness.tensor_memory import CATEGORIES, TensorMemory
from peft_mft.errors import QuantizedMergeError
from peft_mft.tools.output_file import json_report_with

from .timing import PhaseMarks, load_average, machine_description, release_checkpoint_pages, summarize, synchronize
from .variants import Variant, parse_variant, prepare_variant


MAIN_VARIANTS = ("full", "mft", "mft-ste", "mft-hard", "lora-r8", "lora-r64", "qlora-r8", "mft+4bit-base")
MEMORY_VARIANTS = (
    "full+gc", "mft+gc", "mft+sgd", "mft+adamw8bit", "mft+paged-adamw8bit", "mft+adafactor", "mft+bf16-base",
    "mft+bf16-base+adamw8bit+gc", "mft+bf16-base+adafactor+gc", "mft+4bit-base+adamw8bit+gc",
)
DEFAULT_VARIANTS = MAIN_VARIANTS + MEMORY_VARIANTS
# Figures given as a ratio to `full` (key in a variant's result -> label in the table).
RATIO_FIGURES = {
    "step_seconds_median": "step",
    "tensor_memory_peak_bytes": "peak tensor memory",
    "peak_memory_bytes": "peak memory",
    "trainable_parameters": "trainable",
    "optimizer_state_bytes": "optimizer state",
    "adapter_bytes": "adapter",
    "merge_seconds": "merge",
}
# Phases of a timed step: the forward pass (loss), the backward pass, and optimizer.step() with zero_grad.
TIMED_PHASES = ("forward", "backward", "optimizer")
COMPACT_FORMATS = {"soft": ("soft-fp16", "soft-int8"), "hard": ("hard-bits", "hard-indices")}


# ---- one variant (runs in a worker process) ----------------------------------------------------------------------


def load_variant_model(source: str | None, variant: Variant, device: torch.device):
    from harness.embedded import embedded_llava_checkpoint
    from harness.models import load_llava

    source = source or str(embedded_llava_checkpoint())
    # 4-bit: placed on the current CUDA device or CPU
    loaded = load_llava(source, quantize_4bit=variant.quantized_base)
    if not variant.quantized_base:
        loaded.model.to(device)
    return loaded, source


def training_records(data: str | None, image_folder: str | None, limit: int | None = None):
    from harness.data import load_llava_json
    from harness.easyvqa import prepare_easy_vqa

    if data is None:
        files = prepare_easy_vqa()
        data, image_folder = str(files["train"]), str(files["image_folder"])
    return load_llava_json(data, image_folder, limit=limit)


def fixed_batch(processor, records, batch_size: int, seq_len: int, device: torch.device, pixel_dtype) -> dict:
    """The first `batch_size` records as one training batch of exactly `seq_len` tokens per row (right padding with
    `attention_mask` 0 and label -100, or cut; a cut that would drop image tokens raises)."""
    from harness.data import IGNORE_INDEX, LlavaCollator

    if len(records) < batch_size:
        raise ValueError(f"--batch-size {batch_size} needs that many training records; the data has {len(records)}.")
    items = []
    for record in records[:batch_size]:
        item = processor.encode_training(record)
        if record.image is not None:
            item["pixel_values"] = processor.load_image(record)
        items.append(item)
    batch = LlavaCollator(processor.tokenizer.pad_token_id, padding_side="right", pixel_dtype=pixel_dtype)(items)
    length = batch["input_ids"].shape[1]
    if length > seq_len:
        if (batch["input_ids"][:, seq_len:] == processor.image_token_id).any():
            raise ValueError(f"--seq-len {seq_len} would cut image tokens (records need {length}); raise it.")
        for key in ("input_ids", "attention_mask", "labels"):
            batch[key] = batch[key][:, :seq_len]
    elif length < seq_len:
        extra = seq_len - length
        pad = {"input_ids": processor.tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        for key, value in pad.items():
            batch[key] = torch.cat([batch[key], torch.full((batch_size, extra), value, dtype=batch[key].dtype)], 1)
    return {key: value.to(device) for key, value in batch.items()}


def _optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    states = [value for state in optimizer.state.values() for value in state.values()]
    return sum(value.nbytes for value in states if torch.is_tensor(value))


def compact_logit_drift(model, folder: Path, batch: dict) -> float:
    """Largest absolute change of any logit on `batch` when the model's trained scores are replaced by those decoded
    from the compact export in `folder`; the trained scores are put back afterwards."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from peft_mft.tools.export import SCORES_SUFFIX, read_compact_masks, scores_for_mask

    config, _, masks, _ = read_compact_masks(folder)
    spec = config.mask_spec(torch.device("cpu"))
    trained = {key: value.detach().clone() for key, value in get_peft_model_state_dict(model).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(**batch).logits
            set_peft_model_state_dict(model, {key + SCORES_SUFFIX: scores_for_mask(mask, spec)
                                              for key, mask in masks.items()})
            return (model(**batch).logits - reference).abs().max().item()
    finally:
        set_peft_model_state_dict(model, trained)
        model.train(was_training)


def _adapter_figures(prepared, variant: Variant, workdir: Path, batch: dict) -> dict:
    """Bytes of the saved adapter (or full model), compact MFT formats (bytes, mask error, logit drift on `batch`),
    and merge time."""
    from harness.training import weights_size_bytes

    folder = workdir / "saved"
    prepared.model.save_pretrained(folder)
    figures = {"adapter_bytes": weights_size_bytes(folder), "compact": {}}
    if variant.is_mft:
        from peft_mft.tools.export import export_compact_adapter

        mask_type = "hard" if variant.method == "mft-hard" else "soft"
        for fmt in COMPACT_FORMATS[mask_type]:
            export = export_compact_adapter(folder, workdir / fmt, fmt)
            drift = compact_logit_drift(prepared.model, workdir / fmt, batch)
            figures["compact"][fmt] = {"bytes": export.bytes_on_disk, "max_abs_mask_error": export.max_abs_mask_error,
                                       "max_abs_logit_drift": drift}
    figures["merge_seconds"] = None
    if prepared.is_peft:
        try:
            synchronize(next(prepared.model.parameters()).device)
            start = time.perf_counter()
            prepared.model.merge_and_unload()
            figures["merge_seconds"] = time.perf_counter() - start
        except QuantizedMergeError as exc:  # the documented refusal; anything else is a failure
            figures["merge_refused"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return figures


def measure_variant(variant: Variant, args, device: torch.device) -> dict:
    """Load, prepare, time `args.steps` steps after `args.warmup`, then save and merge. Returns a JSON-able dict."""
    torch.manual_seed(0)
    loaded, source = load_variant_model(args.model, variant, device)
    model = loaded.model
    pixel_dtype = next(model.model.vision_tower.parameters()).dtype
    batch = fixed_batch(loaded.processor(), training_records(args.data, args.image_folder, limit=args.batch_size),
                        args.batch_size, args.seq_len, device, pixel_dtype)
    prepared = prepare_variant(model, variant)
    model, optimizer = prepared.model, prepared.optimizer
    release_checkpoint_pages()  # weights replaced by set-up (bf16, 4-bit) must not count; see its docstring
    model.train()
    memory = PeakMemory(device)
    losses = []
    answer_logits = "answer-logits" in variant.options
    inputs = batch
    if answer_logits:  # the labels go to answer_logits_loss, not to the model
        inputs = {**{k: v for k, v in batch.items() if k != "labels"},
                  "logits_to_keep": answer_positions(batch["labels"])}

    def forward_loss() -> torch.Tensor:
        outputs = model(**inputs)
        return answer_logits_loss(outputs, batch["labels"]) if answer_logits else outputs.loss

    def step() -> list[float]:
        """One step; the seconds of each of `TIMED_PHASES`."""
        marks = PhaseMarks(device)
        loss = forward_loss()
        marks.mark()
        loss.backward()
        marks.mark()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.mark()
        losses.append(loss.item())
        return marks.seconds()

    for _ in range(args.warmup):
        step()
    gc.collect()
    resident_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()
    load_before = load_average()
    memory.reset()
    seconds, per_phase = [], []
    for _ in range(args.steps):
        synchronize(device)
        start = time.perf_counter()
        per_phase.append(step())
        seconds.append(time.perf_counter() - start)
    peak_rss = memory.read()
    # One more step, untimed (the dispatch mode slows every operator): live tensor bytes by category at their peak.
    with TensorMemory(model, optimizer) as tensors:
        loss = forward_loss()
        loss.backward()
        optimizer.step()
    tensor_memory = tensors.peak_by_category()
    optimizer.zero_grad(set_to_none=True)
    result = {
        "variant": variant.name,
        "model": source,
        "tensor_memory": tensor_memory,
        "tensor_memory_peak_bytes": tensor_memory["peak"],
        "step_seconds": summarize(seconds),
        "step_seconds_median": summarize(seconds)["median"],
        "step_seconds_all": seconds,
        "phase_seconds_median": {phase: summarize(list(values))["median"]
                                 for phase, values in zip(TIMED_PHASES, zip(*per_phase))},
        "peak_memory_bytes": peak_rss,
        "peak_memory_kind": memory.kind,
        "memory_before_timed_steps_bytes": resident_before,
        "trainable_parameters": prepared.trainable_parameters,
        "optimizer": type(optimizer).__name__,
        "optimizer_state_bytes": _optimizer_state_bytes(optimizer),
        "losses": losses,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    with tempfile.TemporaryDirectory(prefix="mft-bench-") as workdir:
        result.update(_adapter_figures(prepared, variant, Path(workdir), batch))
    return result


def accuracy_variant(variant: Variant, args, device: torch.device) -> dict:
    """Train `args.accuracy_steps` steps with the examples' `train_and_evaluate` and measure exact-match accuracy."""
    from harness.training import TrainConfig, train_and_evaluate

    loaded, source = load_variant_model(args.model, variant, device)
    processor = loaded.processor()  # no truncation, as examples.compare
    train_records = training_records(args.data, args.image_folder)
    eval_records = _eval_records(args)
    prepared = prepare_variant(loaded.model, variant)
    release_checkpoint_pages()
    with tempfile.TemporaryDirectory(prefix="mft-accuracy-") as workdir:
        config = TrainConfig(output_dir=workdir, max_steps=args.accuracy_steps, batch_size=args.batch_size,
                             seed=args.seed, logging_steps=max(1, args.accuracy_steps // 6), eval_batch_size=32,
                             disable_tqdm=True, desc=variant.name,
                             # each gradient is consumed in the backward: nothing is left to clip
                             **({"max_grad_norm": 0.0} if "step-in-backward" in variant.options else {}))
        result = train_and_evaluate(prepared, processor, train_records, eval_records, config, save=False,
                                    check_merged=False)
    result.update(tensor_memory_peak_bytes=result["tensor_memory"]["peak"])
    if variant.method in ("mft", "mft-ste"):  # the soft-mask preset resolved for this model (validated: 3, 0.5)
        adapter = prepared.model.peft_config["default"]
        result.update(init_score=adapter.init_score, temperature=adapter.temperature)
    result.update(variant=variant.name, model=source, optimizer=type(prepared.optimizer).__name__,
                  step_seconds_median=result["median_step_seconds"],
                  optimizer_state_bytes=_optimizer_state_bytes(prepared.optimizer), load_average_after=load_average())
    return result


def _eval_records(args):
    from harness.data import load_llava_json
    from harness.easyvqa import prepare_easy_vqa

    if args.eval_data is None:
        files = prepare_easy_vqa()
        return load_llava_json(files["test"], files["image_folder"], limit=args.eval_samples)
    return load_llava_json(args.eval_data, args.eval_image_folder, limit=args.eval_samples)


# ---- the comparison (parent process) -----------------------------------------------------------------------------


def _worker_command(args, variant: str, result_file: Path) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.train_step", "--worker", variant, "--result-file", str(result_file),
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device, "--accuracy-steps", str(args.accuracy_steps),
               "--seed", str(args.seed), "--eval-samples", str(args.eval_samples)]
    for flag in ("model", "data", "image_folder", "eval_data", "eval_image_folder", "threads"):
        value = getattr(args, flag)
        if value is not None:
            command += ["--" + flag.replace("_", "-"), str(value)]
    return command


def run_variant(args, variant: Variant, device: torch.device) -> dict:
    return (accuracy_variant if args.accuracy_steps else measure_variant)(variant, args, device)


def _run_one(args, variant: Variant, device: torch.device) -> dict:
    """One variant's result (in a worker process unless `args.in_process`); a failure or skip is a result too."""
    print(f"[train_step] {variant.name} ...", file=sys.stderr, flush=True)
    if variant.quantized_base and not _bitsandbytes_supports(device):
        return {"variant": variant.name, "skipped": f"bitsandbytes 4-bit is not available on {device.type}"}
    if args.in_process:
        result = run_variant(args, variant, device)
        gc.collect()
        return result
    with tempfile.TemporaryDirectory(prefix="mft-bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        completed = subprocess.run(_worker_command(args, variant.name, result_file), capture_output=True, text=True)
        if completed.returncode != 0 or not result_file.is_file():
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-12:]
            print("\n".join(tail), file=sys.stderr)
            return {"variant": variant.name, "error": "\n".join(tail)}
        return json.loads(result_file.read_text())


def _run_all(args, variants: list[Variant], device: torch.device, on_result=lambda results: None,
             finished: tuple[dict, ...] = ()) -> list[dict]:
    """Run every variant without a result in `finished`; `on_result(results so far)` after each."""
    done = {r["variant"]: r for r in finished}
    results = [done[v.name] for v in variants if v.name in done]
    for variant in variants:
        if variant.name not in done:
            results.append(_run_one(args, variant, device))
            on_result(results)
    return results


def finished_results(path: Path, setup: dict) -> list[dict]:
    """`--resume`: the successful results of the earlier report at `path` ([] if there is none). Raises ValueError
    when that report was written with another setup (its results would not compare)."""
    if not path.is_file():
        return []
    report = json.loads(path.read_text())
    earlier = {k: v for k, v in report["setup"].items() if k != "model"}  # the model is named from the results
    if earlier != setup:
        differing = sorted(k for k in set(earlier) | set(setup) if earlier.get(k) != setup.get(k))
        details = ", ".join(f"{k}: {earlier.get(k)!r} there, {setup.get(k)!r} here" for k in differing)
        raise ValueError(f"--resume: {path} was written with another setup ({details}); choose another --out")
    return [r for r in report["results"] if "error" not in r and "skipped" not in r]


def _bitsandbytes_supports(device: torch.device) -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return device.type in ("cpu", "cuda")


def add_ratios(results: list[dict]) -> None:
    """Add `ratio_to_full` (figure / full's figure) to every result; None where either is missing or full's is 0."""
    full = next((r for r in results if r.get("variant") == "full" and "error" not in r), None)
    for result in results:
        ratios = {}
        for key in RATIO_FIGURES:
            value, reference = result.get(key), (full or {}).get(key)
            ratios[key] = value / reference if value is not None and reference else None
        if "accuracy" in result and full and "accuracy" in full:
            ratios["accuracy"] = result["accuracy"] / full["accuracy"] if full["accuracy"] else None
        result["ratio_to_full"] = ratios


def _mb(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _ratio(result: dict, key: str) -> str:
    value = result.get("ratio_to_full", {}).get(key)
    return "-" if value is None else f"{value:.2f}"


def _phase_table(results: list[dict], key: str) -> list[str]:
    """Markdown lines: the median seconds of each phase of a step (`key` of a result), for the results that have it."""
    timed = [r for r in results if r.get(key)]
    if not timed:
        return []
    phases = list(timed[0][key])
    header = " | ".join(phase.replace("_", " ") for phase in phases)
    lines = ["", "Median seconds per phase of a step:", "", f"| variant | {header} |", "|---|" + "---|" * len(phases)]
    for r in timed:
        cells = ("-" if r[key][phase] is None else f"{r[key][phase]:.3f}" for phase in phases)
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    setup = report["setup"]
    machine = report["machine"]
    batch = (f"batch {setup['batch_size']} (each padded to its longest record)" if setup["accuracy_steps"]
             else f"batch {setup['batch_size']} x {setup['seq_len']} tokens")
    lines = [
        f"Model `{setup['model']}`, {batch}, {machine['device_name']} "
        f"({machine['device']}, {machine['torch_threads']} threads), torch {machine['torch']}; "
        f"load average at start {report['load_average_start']}, at end {report['load_average_end']}"
        + "".join(f", {k}={v}" for k, v in machine.get("environment", {}).items()) + ".",
        f"Command: `{report['command']}`",
        "",
    ]
    results = report["results"]
    if setup["accuracy_steps"]:
        lines += [
            f"{setup['accuracy_steps']} training steps (examples' Trainer helper, cosine schedule), exact-match "
            f"accuracy on {setup['eval_samples']} held-out records. Tensor memory: peak of live tensor bytes in the "
            "second training step (`harness.tensor_memory`). Peak memory: resident set sampled every 20 ms during "
            "training (CUDA: max allocated). `x full`: divided by full fine-tuning's figure.",
            "",
            "| variant | accuracy | questions | final loss | tensor memory MiB | x full | peak memory MiB | x full | "
            "optimizer state MiB | median step s | x full |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            if "accuracy" not in r:
                reason = (r.get('error') or r.get('skipped')).splitlines()[-1]
                lines.append(f"| {r['variant']} | {reason} |" + " |" * 9)
                continue
            loss = r["loss_history"][-1]["loss"] if r.get("loss_history") else r.get("train_loss")
            lines.append(
                f"| {r['variant']} | {r['accuracy']:.3f} | {r['eval_questions']} | {loss:.3f} | "
                f"{_mb(r.get('tensor_memory_peak_bytes'))} | {_ratio(r, 'tensor_memory_peak_bytes')} | "
                f"{_mb(r['peak_memory_bytes'])} | {_ratio(r, 'peak_memory_bytes')} | "
                f"{_mb(r['optimizer_state_bytes'])} | {r['median_step_seconds']:.2f} | "
                f"{_ratio(r, 'step_seconds_median')} |"
            )
        return "\n".join(lines + _phase_table(results, "median_phase_seconds"))
    lines += [
        f"Step: forward + backward + optimizer step, median and interquartile range over {setup['steps']} steps after "
        f"{setup['warmup']} warm-up. Tensor memory: peak of live tensor bytes during one more step "
        "(`harness.tensor_memory`; what a GPU's max_memory_allocated counts). Peak "
        + ("CUDA max allocated" if machine["device"] == "cuda" else "RSS: the process's resident-set high-water mark")
        + " over the timed steps. `x full`: the figure divided by full fine-tuning's. Merge: `merge_and_unload()` "
        "(full has nothing to merge).",
        "",
        "| variant | step s | IQR s | x full | tensor memory MiB | x full | peak "
        + ("allocated" if machine["device"] == "cuda" else "RSS") + " MiB | x full | trainable params | x full | "
        "optimizer state MiB | x full | adapter MiB | x full | merge s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "step_seconds" not in r:
            lines.append(f"| {r['variant']} | {(r.get('error') or r.get('skipped')).splitlines()[-1]} |" + " |" * 13)
            continue
        step = r["step_seconds"]
        merge = r.get("merge_seconds")
        merge_text = f"{merge:.2f}" if merge is not None else ("refused" if r.get("merge_refused") else "-")
        lines.append(
            f"| {r['variant']} | {step['median']:.3f} | {step['iqr']:.3f} | {_ratio(r, 'step_seconds_median')} | "
            f"{_mb(r.get('tensor_memory_peak_bytes'))} | {_ratio(r, 'tensor_memory_peak_bytes')} | "
            f"{_mb(r['peak_memory_bytes'])} | {_ratio(r, 'peak_memory_bytes')} | "
            f"{r['trainable_parameters']:,} | {_ratio(r, 'trainable_parameters')} | "
            f"{_mb(r['optimizer_state_bytes'])} | {_ratio(r, 'optimizer_state_bytes')} | "
            f"{_mb(r['adapter_bytes'])} | {_ratio(r, 'adapter_bytes')} | {merge_text} |"
        )
    measured = [r for r in results if "tensor_memory" in r]
    if measured:
        lines += ["", "Tensor memory at its peak, by what the tensors hold (MiB):", "",
                  "| variant | " + " | ".join(c.replace("_", " ") for c in CATEGORIES) + " | peak |",
                  "|---|" + "---|" * (len(CATEGORIES) + 1)]
        for r in measured:
            t = r["tensor_memory"]
            lines.append(f"| {r['variant']} | " + " | ".join(_mb(t[c]) for c in CATEGORIES) + f" | {_mb(t['peak'])} |")
    lines += _phase_table(results, "phase_seconds_median")
    compact = [(r["variant"], fmt, c) for r in results for fmt, c in r.get("compact", {}).items()]
    if compact:
        lines += ["", "Compact MFT adapters (`peft_mft.tools.export`; inference only, training resumes from the fp32 "
                      "scores):",
                  "", "| variant | format | MiB | x fp32 scores | x lora-r8 adapter | max abs mask error | "
                  "max abs logit drift |", "|---|---|---|---|---|---|---|"]
        lora = next((r["adapter_bytes"] for r in results if r["variant"] == "lora-r8" and "adapter_bytes" in r), None)
        for name, fmt, c in compact:
            scores = next(r["adapter_bytes"] for r in results if r["variant"] == name)
            versus_lora = f"{c['bytes'] / lora:.2f}" if lora else "-"
            lines.append(f"| {name} | {fmt} | {_mb(c['bytes'])} | {c['bytes'] / scores:.3f} | {versus_lora} | "
                         f"{c['max_abs_mask_error']:.2e} | {c['max_abs_logit_drift']:.2e} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="LLaVA checkpoint folder or Hub id (default: the embedded VLM)")
    parser.add_argument("--methods", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated variants METHOD[+OPTION...] (see benchmarks/variants.py)")
    parser.add_argument("--data", default=None, help="LLaVA JSON for the batch / training (default: easy-vqa train)")
    parser.add_argument("--image-folder", default=None)
    parser.add_argument("--eval-data", default=None,
                        help="held-out LLaVA JSON for --accuracy-steps (default: easy-vqa test)")
    parser.add_argument("--eval-image-folder", default=None)
    parser.add_argument("--eval-samples", type=int, default=500, help="held-out records evaluated with "
                                                                      "--accuracy-steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per row (timed steps; not used for accuracy)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (optimizer state is created)")
    parser.add_argument("--accuracy-steps", type=int, default=0, help="train N steps and measure accuracy instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="folder for the JSON and Markdown (default: "
                                                    "benchmarks/results/<device>)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished variants of the report already in --out (same setup) and run the rest")
    parser.add_argument("--in-process", action="store_true",
                        help="run variants in this process (fast, for tests; peak memory is then not per variant)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.worker:
        result = run_variant(args, parse_variant(args.worker), device)
        Path(args.result_file).write_text(json.dumps(result))
        return result
    variants = [parse_variant(text) for text in args.methods.split(",") if text.strip()]
    command = "python -m benchmarks.train_step " + " ".join(sys.argv[1:] if argv is None else argv)
    load_start = load_average()
    out = Path(args.out or Path(__file__).parent / "results" / device.type)
    stem = "memory_accuracy" if args.accuracy_steps else "train_step"
    check_report_files(parser, "--out", [out / f"{stem}.json", out / f"{stem}.md"], "python -m benchmarks.train_step",
                       json_report_with("results", "setup", benchmark="train_step"))
    out.mkdir(parents=True, exist_ok=True)

    setup = {"batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
             "accuracy_steps": args.accuracy_steps, "eval_samples": args.eval_samples, "seed": args.seed,
             "in_process": args.in_process}
    finished = finished_results(out / f"{stem}.json", setup) if args.resume else []

    def report_for(results: list[dict]) -> dict:
        add_ratios(results)
        model = next((r["model"] for r in results if "model" in r), args.model or "embedded")
        return {
            "benchmark": "train_step",
            "command": command,
            "setup": {"model": model, **setup},
            "machine": machine_description(device),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "complete": len(results) == len(variants),
            "results": results,
        }

    def write(results: list[dict]) -> None:
        report = report_for(results)
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
        (out / f"{stem}.md").write_text(markdown(report) + "\n")

    report = report_for(_run_all(args, variants, device, on_result=write, finished=tuple(finished)))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
