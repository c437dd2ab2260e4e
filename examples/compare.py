# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The main job: MFT against LoRA, QLoRA and full fine-tuning on the embedded default VLM, one table.

    python -m examples.compare            # every method, same steps / batch / data order / seed
    python -m examples.compare --quick    # smoke run: a few steps and questions per method

Each method trains at the hyperparameters picked on validation for examples/RESULTS.md, read from the committed
examples/results/hyperparameters.json (which the results runner writes from its records): the same numbers the long
runs use, and for as many steps as the short runs that picked them (the file's `steps`). H-MFT runs at the level
read off the long S-MFT masks and the lr its validation check at that length picked, or at the library defaults
(lr 0.01, 1% zeroed) while that check is pending.

The model is the embedded default (SmolLM2-135M-Instruct + EfficientNet-Lite0 as a `LlavaForConditionalGeneration`,
projector aligned in stage 1; built from pip packages on first use and cached), the data easy-vqa (train split for
training, a fixed sample of its test split for evaluation). Each method starts from a fresh copy of the checkpoint.
Printed per method: trainable parameters, size of what is saved (adapter, or the whole model for `full`), median
optimizer-step time, peak memory during training, exact-match test accuracy, and the accuracy of the merged model
(`merge_and_unload()`), which must equal the unmerged one. Training runs in bf16 autocast where this machine has
native bf16 kernels (a GPU, or a CPU with AVX-512 bf16), else in fp32, as the README's timing was measured;
`--bf16` trains in bf16 autocast there too, on emulated kernels (`harness.precision`); `--fp32` opts out.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import time
from pathlib import Path

from harness.data import load_llava_json
from harness.easyvqa import prepare_easy_vqa
from harness.embedded import embedded_cache_path, embedded_llava_checkpoint
from harness.evaluation import evaluate_vqa
from harness.methods import METHODS, MethodArgs, prepare_model
from harness.models import load_llava
from harness.precision import bf16_is_native, emulation_reason
from harness.report_files import check_report_files
from harness.statistics import binomial_se
from harness.training import TrainConfig, train_and_evaluate
from peft_mft.tools.output_file import json_report_with

from .results_plan import HYPERPARAMETERS_FILE


def validated_hyperparameters() -> dict:
    """{"steps": the length they were validated at, "methods": {method: hyperparameters}} from
    `HYPERPARAMETERS_FILE`."""
    return json.loads(HYPERPARAMETERS_FILE.read_text())


VALIDATED = validated_hyperparameters()
FULL = {"steps": VALIDATED["steps"], "batch_size": 8, "eval_samples": 200}  # the length they were validated at
QUICK = {"steps": 2, "batch_size": 2, "eval_samples": 8}
QUICK_STAGE1_STEPS = 4  # used only when the full stage-1 projector is not cached yet


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_table(rows: list[dict], baseline: dict | None) -> str:
    header = ["method", "trainable params", "saved size", "median step", "peak memory", "test acc", "merged acc"]
    lines = []
    if baseline is not None:
        lines.append(["(no fine-tuning)", "0", "-", "-", "-", f"{100 * baseline['accuracy']:.1f}%", "-"])
    for r in rows:
        if "error" in r:
            lines.append([r["method"], "-", "-", "-", "-", "failed: " + r["error"][:60], "-"])
            continue
        merged = r.get("merged_accuracy")
        merged_text = "- (no adapter)" if merged is None else f"{100 * merged:.1f}%"
        if merged is not None and not r.get("merged_identical_predictions", True):
            merged_text += f" ({r['merged_differing_predictions']} answers differ)"
        lines.append([
            r["method"], _fmt_count(r["trainable_parameters"]), _fmt_bytes(r.get("saved_bytes")),
            f"{r['median_step_seconds']:.2f} s", _fmt_bytes(r["peak_memory_bytes"]),
            f"{100 * r['accuracy']:.1f}%", merged_text,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), "-|-".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def tuned_method_args(method: str, validated: dict) -> MethodArgs:
    """`MethodArgs` at the validated hyperparameters (`validated_hyperparameters()["methods"]`); defaults where none
    exist."""
    if method in ("mft", "mft-ste"):
        return MethodArgs(**validated["mft"])
    if method in ("lora", "qlora"):
        return MethodArgs(lr=validated["lora"]["lr"])
    if method == "full":
        return MethodArgs(lr=validated["full"]["lr"])
    if method == "mft-hard" and "mft-hard" in validated:
        return MethodArgs(**validated["mft-hard"])
    return MethodArgs()


def describe_args(method: str, args: MethodArgs, validated: dict) -> str:
    text = f"lr {args.learning_rate(method):g}"
    if method in ("mft", "mft-ste"):
        text += f", init {args.init_score:g}, T {args.temperature:g}"
    if method == "mft-hard":
        text += f", {100 * args.sparsity:g}% zeroed"
        text += "" if "mft-hard" in validated else " (defaults, not validated)"
    return text


def write_loss_png(rows: list[dict], path: Path) -> Path:
    """Training loss against optimizer step, one line per finished method (its test accuracy in the legend)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = figure.subplots()
    for r in rows:
        if "loss_history" in r:
            ax.plot([h["step"] for h in r["loss_history"]], [h["loss"] for h in r["loss_history"]],
                    label=f"{r['method']} (test {100 * r['accuracy']:.1f}%)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_yscale("log")
    ax.set_title("examples.compare: training loss per method")
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=110, format="png")
    return path


def release_memory() -> None:
    """Free what the previous method held, and hand freed heap pages back to the OS (glibc), so that the next
    method's peak resident set size is not inflated by the last one's."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def write_results(out: Path, baseline: dict | None, rows: list[dict], **settings) -> None:
    """``out/results.json``: the settings (``elapsed_seconds`` so far, from the start), the untuned model's accuracy
    and one record per finished method; rewritten after every method so an interrupted run keeps what finished."""
    record = {"settings": {**settings, "cpu_count": os.cpu_count()},
              "baseline": baseline and {k: v for k, v in baseline.items() if k != "predictions"}, "runs": rows}
    (out / "results.json").write_text(json.dumps(record, indent=1))


def main(argv=None) -> list[dict]:
    """Run the comparison and return one result dict per method; exits non-zero (SystemExit) after writing the
    table when any method failed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps per method (default {FULL['steps']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {FULL['batch_size']}")
    p.add_argument("--eval-samples", type=int, default=None, help=f"test questions (default {FULL['eval_samples']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip evaluating the model before fine-tuning")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp32", action="store_true", help="train in fp32 (default: bf16 autocast for every "
                           "method where this machine has native bf16 kernels, else fp32; evaluation is always fp32)")
    precision.add_argument("--bf16", action="store_true", help="train in bf16 autocast also on a CPU without "
                           "native bf16 (emulated kernels)")
    p.add_argument("--output-dir", default="outputs/compare")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    preset = QUICK if args.quick else FULL
    steps = args.steps or preset["steps"]
    batch_size = args.batch_size or preset["batch_size"]
    eval_samples = args.eval_samples or preset["eval_samples"]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {METHODS}")
    out = Path(args.output_dir)
    check_report_files(p, "--output-dir", [out / "results.json", out / "curves.png"], "python -m examples.compare",
                       json_report_with("settings", "runs"))

    bf16 = args.bf16 or (not args.fp32 and bf16_is_native())
    if not bf16 and not args.fp32:
        print(f"training in fp32: no native bf16 kernels here (--bf16 trains in bf16 autocast on emulated ones: "
              f"{emulation_reason()})")
    start = time.time()
    if args.quick and not (embedded_cache_path() / "stage1.json").is_file():
        # a smoke run does not wait for the full projector alignment; it builds a barely aligned one instead
        checkpoint = embedded_llava_checkpoint(stage1_steps=QUICK_STAGE1_STEPS)
    else:
        checkpoint = embedded_llava_checkpoint()
    data = prepare_easy_vqa()
    train_records = load_llava_json(data["train"], data["image_folder"])
    eval_records = load_llava_json(data["test"], data["image_folder"], limit=eval_samples)
    out.mkdir(parents=True, exist_ok=True)
    print(f"model {checkpoint}\ntrain {len(train_records)} records, eval {len(eval_records)} test questions; "
          f"{steps} steps x batch {batch_size} per method, seed {args.seed}")

    processor = None
    baseline = None
    if not args.no_baseline:
        loaded = load_llava(str(checkpoint))
        processor = loaded.processor()
        baseline = evaluate_vqa(loaded.model, processor, eval_records, desc="eval (no fine-tuning)")
        del loaded
        release_memory()

    validated = validated_hyperparameters()["methods"]
    method_args = {method: tuned_method_args(method, validated) for method in methods}
    print("hyperparameters (picked on validation, examples/RESULTS.md): "
          + "; ".join(f"{m} {describe_args(m, a, validated)}" for m, a in method_args.items()))
    rows = []
    for method in methods:
        loaded = load_llava(str(checkpoint), quantize_4bit=method == "qlora")
        processor = processor or loaded.processor()
        prepared = None
        try:
            prepared = prepare_model(loaded.model, method, method_args[method])
            result = train_and_evaluate(
                prepared, processor, train_records, eval_records,
                TrainConfig(output_dir=str(out / method), max_steps=steps, batch_size=batch_size, seed=args.seed,
                            logging_steps=max(1, steps // 12), eval_batch_size=32, bf16=bf16,
                            desc=method),
            )
        except Exception as err:  # noqa: BLE001 - one failing method must not hide the others' results
            logging.exception("%s failed", method)
            result = {"method": method, "error": f"{type(err).__name__}: {err}"}
        rows.append(result)
        loaded = prepared = None
        release_memory()
        write_results(out, baseline, rows, steps=steps, batch_size=batch_size, eval_questions=len(eval_records),
                      seed=args.seed, bf16=bf16, elapsed_seconds=round(time.time() - start, 1))

    print()
    print(format_table(rows, baseline))
    print(f"\n{len(eval_records)} easy-vqa test questions; {steps} steps x batch {batch_size}, "
          f"{'bf16 autocast' if bf16 else 'fp32'} training; "
          f"total {time.time() - start:.0f} s. Details: {out / 'results.json'}")
    finished = [row["accuracy"] for row in rows if "accuracy" in row]
    if finished:
        typical = sum(finished) / len(finished)
        print(f"One seed on {len(eval_records)} questions: each accuracy is uncertain by about "
              f"{100 * binomial_se(typical, len(eval_records)):.1f} points (binomial s.e. at {100 * typical:.0f}%), "
              "so gaps of a few points are noise. The tested comparison (long runs, several seeds, paired): "
              "examples/RESULTS.md.")
    if any("loss_history" in row for row in rows):
        print(f"Training-loss curves: {write_loss_png(rows, out / 'curves.png')}; the long runs' validation curves "
              "(mean and band over seeds): examples/results/curves.png")
    failed = [row["method"] for row in rows if "error" in row]
    if failed:  # the others' results are in the table and results.json; the job still failed
        raise SystemExit(f"examples.compare: {len(failed)} of {len(rows)} methods failed ({', '.join(failed)}); "
                         "their tracebacks are in the log above")
    return rows


if __name__ == "__main__":
    main()
