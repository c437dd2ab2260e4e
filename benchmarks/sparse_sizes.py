# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Size against test accuracy of the soft-sparse format, over a sweep of thresholds, for one trained S-MFT adapter.

    python -m benchmarks.sparse_sizes ADAPTER                       # embedded VLM, easy-vqa test, default thresholds
    python -m benchmarks.sparse_sizes ADAPTER --thresholds 0.001 0.01 0.05 --eval-samples 400 --out results/sparse

For each threshold: the folder `peft-mft export --format sparse --min-change T` writes (bytes), the share of masks
kept, the largest |logit change| against the float32 adapter on the calibration batch `--max-drift` measures it on
(`peft_mft.tools.sparse_threshold.random_calibration_inputs`) and exact-match accuracy on `--eval-samples` held-out
questions, beside the float32 adapter's own accuracy and size (each accuracy with its binomial s.e.). Writes
`sparse_sizes.json`, `.md` and a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from harness.evaluation import evaluate_vqa
from harness.models import load_llava
from harness.report_files import check_report_files
from harness.statistics import binomial_se
from peft_mft.adapter_files import load_adapter
from peft_mft.tools.export import COMPACT_WEIGHTS_NAME, export_compact_adapter, load_compact_adapter
from peft_mft.tools.output_file import json_report_with
from peft_mft.tools.sparse_threshold import random_calibration_inputs


DEFAULT_THRESHOLDS = (0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits.float()


def measure(adapter: Path, model_source: str, eval_records, thresholds, eval_batch_size: int = 32) -> dict:
    """The float32 adapter's figures, then one row per threshold (see the module docstring)."""
    loaded = load_llava(model_source)
    processor = loaded.processor()
    reference = load_adapter(loaded.model, adapter).eval()
    calibration = random_calibration_inputs(reference)
    reference_logits = _logits(reference, calibration)
    scores_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    evaluated = evaluate_vqa(reference, processor, eval_records, batch_size=eval_batch_size, desc="float32 adapter")
    rows = []
    del reference, loaded
    with tempfile.TemporaryDirectory(prefix="mft-sparse-") as workdir:
        for threshold in thresholds:
            folder = Path(workdir) / f"t{threshold:g}"
            export_compact_adapter(adapter, folder, "soft-sparse", threshold=threshold)
            meta = json.loads((folder / "mft_compact.json").read_text())
            model = load_compact_adapter(load_llava(model_source).model, folder)
            result = evaluate_vqa(model, processor, eval_records, batch_size=eval_batch_size,
                                  desc=f"sparse {threshold:g}")
            rows.append({
                "threshold": threshold,
                "bytes": (folder / COMPACT_WEIGHTS_NAME).stat().st_size,
                "kept_share": meta["kept_share"],
                "max_logit_drift": float((_logits(model, calibration) - reference_logits).abs().max()),
                "accuracy": result["accuracy"],
                "answers_changed": sum(a["prediction"] != b["prediction"]
                                       for a, b in zip(result["predictions"], evaluated["predictions"])),
            })
            del model
    n = len(eval_records)
    return {"adapter": str(adapter), "model": model_source, "eval_questions": n, "scores_bytes": scores_bytes,
            "float32_accuracy": evaluated["accuracy"],
            "float32_accuracy_se": binomial_se(evaluated["accuracy"], evaluated["total"]), "rows": rows}


def markdown(report: dict, lora_bytes: dict[str, int]) -> str:
    n = report["eval_questions"]
    base = report["float32_accuracy"]
    se = 100 * report["float32_accuracy_se"]
    lines = [f"Adapter `{report['adapter']}` on `{report['model']}`; {n} test questions. float32 scores: "
             f"{report['scores_bytes'] / 2**20:.1f} MiB, accuracy {100 * base:.1f}% (± {se:.1f} binomial s.e.)."
             + "".join(f" {name}: {size / 2**20:.1f} MiB." for name, size in lora_bytes.items()), "",
             "| threshold | MiB | x float32 | masks kept | max logit drift | test acc | minus float32 "
             "| answers changed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['threshold']:g} | {r['bytes'] / 2**20:.2f} | {r['bytes'] / report['scores_bytes']:.3f} | "
                     f"{100 * r['kept_share']:.3g}% | {r['max_logit_drift']:.3g} | {100 * r['accuracy']:.1f} | "
                     f"{100 * (r['accuracy'] - base):+.1f} | {r['answers_changed']} of {n} |")
    return "\n".join(lines)


def write_png(report: dict, lora_bytes: dict[str, int], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.4), layout="constrained")
    ax = figure.subplots()
    rows = report["rows"]
    ax.plot([r["bytes"] / 2**20 for r in rows], [100 * r["accuracy"] for r in rows], "o-",
            label="S-MFT exported as soft-sparse (label: --min-change X;\nmasks that moved less load as initial)")
    for r in rows:
        ax.annotate(f"{r['threshold']:g}", (r["bytes"] / 2**20, 100 * r["accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    base, se = 100 * report["float32_accuracy"], 100 * report["float32_accuracy_se"]
    float32_mib = report["scores_bytes"] / 2**20
    ax.axhspan(base - se, base + se, color="grey", alpha=0.25,
               label=f"S-MFT float32 adapter ({float32_mib:.0f} MiB): accuracy ± 1 binomial s.e.")
    for (name, size), style in zip(sorted(lora_bytes.items(), key=lambda item: item[1]), ("--", ":", "-.")):
        ax.axvline(size / 2**20, linestyle=style, color="tab:red", linewidth=1.0,
                   label=f"{name.replace('lora-r', 'LoRA r ')} adapter size ({size / 2**20:.1f} MiB)")
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("adapter size on disk (MiB, log scale)")
    ax.set_ylabel(f"test exact-match accuracy (%, {report['eval_questions']} questions)")
    ax.set_title("Compact S-MFT adapters: size against accuracy")
    ax.legend(fontsize=7, loc="upper left")
    figure.savefig(path, dpi=110, format="png")


def lora_sizes_of(report: dict) -> dict[str, int]:
    """The LoRA sizes a stored report was drawn with (`--lora-bytes` in its command)."""
    words = report.get("command", "").split()
    sizes = {}
    for word in words[words.index("--lora-bytes") + 1:] if "--lora-bytes" in words else []:
        name, _, size = word.partition("=")
        if not size.isdigit():
            break
        sizes[name] = int(size)
    return sizes


def replot(folder: Path) -> Path:
    """Draw `folder`'s sparse_sizes.png again from its sparse_sizes.json (no model run)."""
    report = json.loads((folder / "sparse_sizes.json").read_text())
    write_png(report, lora_sizes_of(report), folder / "sparse_sizes.png")
    return folder / "sparse_sizes.png"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("adapter", nargs="?", help="trained S-MFT adapter folder (float32 scores)")
    p.add_argument("--replot", metavar="FOLDER", default=None,
                   help="only draw FOLDER's sparse_sizes.png again from its sparse_sizes.json (no model run)")
    p.add_argument("--model", default=None, help="base LLaVA folder (default: the embedded VLM)")
    p.add_argument("--eval-data", default=None, help="held-out LLaVA JSON (default: easy-vqa test)")
    p.add_argument("--image-folder", default=None)
    p.add_argument("--eval-samples", type=int, default=400)
    p.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    p.add_argument("--lora-bytes", nargs="*", default=[], metavar="NAME=BYTES",
                   help="LoRA adapter sizes to draw beside the curve, e.g. lora-r16=19800000")
    p.add_argument("--out", default="benchmarks/results/sparse")
    args = p.parse_args(argv)
    if args.replot:
        print(replot(Path(args.replot)))
        return json.loads((Path(args.replot) / "sparse_sizes.json").read_text())
    if args.adapter is None:
        p.error("give the adapter folder (or --replot FOLDER)")
    from harness.data import load_llava_json

    out = Path(args.out)
    check_report_files(p, "--out", [out / "sparse_sizes.json", out / "sparse_sizes.md", out / "sparse_sizes.png"],
                       "python -m benchmarks.sparse_sizes",
                       json_report_with("rows", "scores_bytes", "float32_accuracy"))

    if args.eval_data is None:
        from harness.easyvqa import prepare_easy_vqa

        data = prepare_easy_vqa()
        args.eval_data, args.image_folder = str(data["test"]), str(data["image_folder"])
    if args.model is None:
        from harness.embedded import embedded_llava_checkpoint

        args.model = str(embedded_llava_checkpoint())
    lora_bytes = {}
    for item in args.lora_bytes:
        name, _, size = item.partition("=")
        if not size.isdigit():
            p.error(f"--lora-bytes {item!r}: expected NAME=BYTES")
        lora_bytes[name] = int(size)
    records = load_llava_json(args.eval_data, args.image_folder, limit=args.eval_samples)
    report = measure(Path(args.adapter), args.model, records, args.thresholds)
    report["command"] = "python -m benchmarks.sparse_sizes " + " ".join(sys.argv[1:] if argv is None else argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sparse_sizes.json").write_text(json.dumps(report, indent=1))
    (out / "sparse_sizes.md").write_text(markdown(report, lora_bytes) + "\n")
    write_png(report, lora_bytes, out / "sparse_sizes.png")
    print(markdown(report, lora_bytes))
    return report


if __name__ == "__main__":
    main()
