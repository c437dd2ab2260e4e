# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Where a training step's time goes, by phase and by operator: `torch.profiler` over a few steps of one variant.

    for v in mft mft+bf16-base+adamw8bit+gc; do
        python -m benchmarks.profile_step $v --out benchmarks/results/cpu-profile
    done

The steps are shaped as the Trainer's in `harness.training` (and `benchmarks.train_step --accuracy-steps`): batches of
`--batch-size` training records in a seeded random order, each padded to its longest record, the gradient norm
clipped to 1.0, `optimizer.step()`, `zero_grad`. `--warmup` steps run unprofiled first (the optimizer state is
created), then `--steps` profiled ones. Each step's phases (forward, backward, clip, optimizer) are timed beside the
operators: phases in wall time (the device synchronized after each), operators in CPU self time as the profiler
counts it. The profiler slows every operator a little: compare variants profiled alike.

Writes `<variant>.json` (seconds per step by phase and by operator) under `--out`, then `profile.md` comparing every
variant profiled into that folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from harness.report_files import check_report_files
from peft_mft.tools.output_file import json_report_with, text_starting_with

from .timing import PhaseMarks, load_average, machine_description, release_checkpoint_pages
from .train_step import load_variant_model, training_records
from .variants import parse_variant, prepare_variant


PHASES = ("forward", "backward", "clip", "optimizer")
MAX_GRAD_NORM = 1.0  # the Trainer's default, as harness.training.TrainConfig uses it
OPERATORS_KEPT = 40  # per variant, by self time
OPERATORS_SHOWN = 15  # in profile.md, by the largest self time among the variants
MARKDOWN_START = "Seconds per profiled step"
COMMAND = "python -m benchmarks.profile_step"
IS_RESULT = json_report_with("phase_seconds")  # a variant's result, told from other JSON files in --out


def trainer_batches(processor, records, batch_size: int, count: int, seed: int, pixel_dtype, device) -> list[dict]:
    """`count` batches of `batch_size` records in a seeded random order, right-padded to each batch's longest."""
    from harness.data import LlavaCollator, LlavaDataset

    if len(records) < batch_size * count:
        raise ValueError(f"{count} batches of {batch_size} need {batch_size * count} training records; "
                         f"the data has {len(records)}")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    dataset = LlavaDataset(records, processor)
    collate = LlavaCollator(processor.tokenizer.pad_token_id, padding_side="right", pixel_dtype=pixel_dtype)
    batches = []
    for start in range(0, batch_size * count, batch_size):
        batch = collate([dataset[i] for i in order[start : start + batch_size]])
        batches.append({key: value.to(device) for key, value in batch.items()})
    return batches


def profile_variant(variant_name: str, args) -> dict:
    """Profile `args.steps` Trainer-shaped steps of one variant; seconds per step by phase and by operator."""
    variant = parse_variant(variant_name)
    device = torch.device(args.device)
    torch.manual_seed(0)
    loaded, source = load_variant_model(args.model, variant, device)
    pixel_dtype = next(loaded.model.model.vision_tower.parameters()).dtype
    records = training_records(args.data, args.image_folder)
    batches = trainer_batches(loaded.processor(), records, args.batch_size, args.warmup + args.steps, args.seed,
                              pixel_dtype, device)
    prepared = prepare_variant(loaded.model, variant)
    model, optimizer = prepared.model, prepared.optimizer
    release_checkpoint_pages()
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]

    def step(batch) -> list[float]:
        """One step; the seconds of each of `PHASES`."""
        marks = PhaseMarks(device)
        with record_function("phase:forward"):  # names the phases in the profiler's trace
            loss = model(**batch).loss
        marks.mark()
        with record_function("phase:backward"):
            loss.backward()
        marks.mark()
        with record_function("phase:clip"):
            torch.nn.utils.clip_grad_norm_(trained, MAX_GRAD_NORM)
        marks.mark()
        with record_function("phase:optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        marks.mark()
        return marks.seconds()

    for batch in batches[: args.warmup]:
        step(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        per_step = [step(batch) for batch in batches[args.warmup :]]
    phase_seconds = {phase: sum(seconds) / args.steps for phase, seconds in zip(PHASES, zip(*per_step))}
    operators = sorted((e for e in profiler.key_averages() if not e.key.startswith("phase:")),
                       key=lambda e: -e.self_cpu_time_total)
    in_seconds = 1e-6 / args.steps  # the profiler's microseconds in total -> seconds per step
    return {
        "variant": variant_name,
        "model": source,
        "machine": machine_description(device),
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "tokens_per_row": [batch["input_ids"].shape[1] for batch in batches[args.warmup :]],
        "step_seconds_profiled": sum(phase_seconds.values()),
        "phase_seconds": phase_seconds,
        "operators": [
            {"name": e.key, "self_seconds": e.self_cpu_time_total * in_seconds, "calls": e.count / args.steps}
            for e in operators[:OPERATORS_KEPT]
        ],
        "load_average_after": load_average(),
    }


def markdown(results: list[dict]) -> str:
    """Phases and the heaviest operators of every variant, seconds per step, side by side."""
    names = [r["variant"] for r in results]
    header = "| | " + " | ".join(names) + " |"
    rule = "|---|" + "---|" * len(names)
    lines = [MARKDOWN_START + " (`python -m benchmarks.profile_step`; tokens per row: "
             + "; ".join(f"{r['variant']} {r['tokens_per_row']}" for r in results) + ").", "",
             "By phase:", "", header, rule]
    lines.append("| wall (profiled) | " + " | ".join(f"{r['step_seconds_profiled']:.2f}" for r in results) + " |")
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(f"{r['phase_seconds'][phase]:.2f}" for r in results) + " |")
    by_variant = [{op["name"]: op for op in r["operators"]} for r in results]
    heaviest = sorted({name for ops in by_variant for name in ops},
                      key=lambda name: -max(ops[name]["self_seconds"] if name in ops else 0.0 for ops in by_variant))
    lines += ["", "By operator (self time; calls per step in brackets; '-': not among that variant's "
              f"{OPERATORS_KEPT} heaviest):", "", header, rule]
    for name in heaviest[:OPERATORS_SHOWN]:
        cells = (f"{ops[name]['self_seconds']:.3f} ({ops[name]['calls']:g})" if name in ops else "-"
                 for ops in by_variant)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", help="METHOD[+OPTION...], as benchmarks.train_step --methods takes them")
    parser.add_argument("--model", default=None, help="LLaVA checkpoint folder (default: the embedded VLM)")
    parser.add_argument("--data", default=None, help="LLaVA JSON of training records (default: easy-vqa train)")
    parser.add_argument("--image-folder", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    parser.add_argument("--seed", type=int, default=0, help="order of the training records")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    result_file, table_file = args.out / f"{args.variant}.json", args.out / "profile.md"
    check_report_files(parser, "--out", [result_file], COMMAND, IS_RESULT)
    check_report_files(parser, "--out", [table_file], COMMAND, text_starting_with(MARKDOWN_START))
    try:
        result = profile_variant(args.variant, args)
    except ValueError as exc:  # a variant or batch the data cannot give
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    results = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json")) if IS_RESULT(p)]
    table_file.write_text(markdown(results) + "\n")
    return result


if __name__ == "__main__":
    main()
