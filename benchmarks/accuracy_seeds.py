"""Accuracy and peak memory over seeds: one table from several `train_step --accuracy-steps` reports.

    python -m benchmarks.accuracy_seeds benchmarks/results/cpu-accuracy*/memory_accuracy.json

Per variant: accuracy of each report's seed, mean ± sample standard deviation over seeds, the binomial standard error
of one run's accuracy (sqrt(p (1 - p) / questions): the noise from evaluating on a sample of questions alone), and the
median over seeds of the peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def collect(paths: list[Path]) -> dict[str, dict[int, dict]]:
    """-> {variant: {seed: result}} from `memory_accuracy.json` reports. Raises ValueError on a timing report or a
    variant measured twice for one seed."""
    by_variant: dict[str, dict[int, dict]] = {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        if not report["setup"].get("accuracy_steps"):
            raise ValueError(f"{path}: not an --accuracy-steps report (no accuracy figures).")
        for result in report["results"]:
            if "accuracy" not in result:
                continue
            seeds = by_variant.setdefault(result["variant"], {})
            if result["seed"] in seeds:
                raise ValueError(f"{path}: {result['variant']} seed {result['seed']} appears in two reports.")
            seeds[result["seed"]] = result
    return by_variant


def markdown(by_variant: dict[str, dict[int, dict]]) -> str:
    all_seeds = sorted({seed for seeds in by_variant.values() for seed in seeds})
    lines = ["| variant | " + " | ".join(f"seed {s}" for s in all_seeds) + " | mean ± std | binomial s.e. | "
             "peak memory MiB (median) |", "|---|" + "---|" * (len(all_seeds) + 3)]
    for variant, seeds in by_variant.items():
        accuracies = [seeds[s]["accuracy"] for s in sorted(seeds)]
        mean = statistics.mean(accuracies)
        spread = f" ± {100 * statistics.stdev(accuracies):.1f}" if len(accuracies) > 1 else ""
        questions = statistics.median(r["eval_questions"] for r in seeds.values())
        error = math.sqrt(mean * (1 - mean) / questions)
        cells = [f"{100 * seeds[s]['accuracy']:.1f}" if s in seeds else "-" for s in all_seeds]
        peak = statistics.median(r["peak_memory_bytes"] for r in seeds.values()) / 2**20
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {100 * mean:.1f}{spread} | {100 * error:.1f} | "
                     f"{peak:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="memory_accuracy.json files")
    table = markdown(collect(parser.parse_args(argv).reports))
    print(table)
    return table


if __name__ == "__main__":
    main()
