# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Accuracy and peak memory over seeds: one table from several `train_step --accuracy-steps` reports.

    python -m benchmarks.accuracy_seeds benchmarks/results/cpu-accuracy*/memory_accuracy.json
    python -m benchmarks.accuracy_seeds --baseline mft benchmarks/results/cpu-lean-accuracy/seed*/memory_accuracy.json

Per variant: accuracy of each report's seed, mean ± sample standard deviation over seeds, the binomial standard error
of one run's accuracy (sqrt(p (1 - p) / questions): the noise from evaluating on a sample of questions alone), and the
median over seeds of the peak memory (resident set) and of the tensor memory where recorded.

With `--baseline VARIANT`, every other variant is compared with it seed by seed (same seed: same data order and
questions): the per-seed differences in points, their mean with the 95% half-width of a paired t-test over seeds
("clear" when the interval excludes 0), and per seed McNemar's exact test on the questions only one of the two
answered (reports that recorded each question's correctness).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from harness.evaluation import correctness_from_text
from harness.statistics import mcnemar_exact, paired_comparison


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
             "peak memory MiB (median) | tensor memory MiB (median) |", "|---|" + "---|" * (len(all_seeds) + 4)]
    for variant, seeds in by_variant.items():
        accuracies = [seeds[s]["accuracy"] for s in sorted(seeds)]
        mean = statistics.mean(accuracies)
        spread = f" ± {100 * statistics.stdev(accuracies):.1f}" if len(accuracies) > 1 else ""
        questions = statistics.median(r["eval_questions"] for r in seeds.values())
        error = math.sqrt(mean * (1 - mean) / questions)
        cells = [f"{100 * seeds[s]['accuracy']:.1f}" if s in seeds else "-" for s in all_seeds]
        peak = statistics.median(r["peak_memory_bytes"] for r in seeds.values()) / 2**20
        tensors = [r["tensor_memory"]["peak"] for r in seeds.values() if r.get("tensor_memory")]
        tensor_cell = f"{statistics.median(tensors) / 2**20:,.0f}" if tensors else "-"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {100 * mean:.1f}{spread} | {100 * error:.1f} | "
                     f"{peak:,.0f} | {tensor_cell} |")
    return "\n".join(lines)


def paired_markdown(by_variant: dict[str, dict[int, dict]], baseline: str) -> str:
    """Each variant against `baseline` on the seeds both have (see the module docstring)."""
    if baseline not in by_variant:
        raise ValueError(f"--baseline {baseline!r} is not among the variants ({', '.join(by_variant)})")
    lines = [f"| variant - {baseline} | per-seed difference, points | mean ± 95% half-width (paired t) | clear? | "
             "McNemar per seed: only variant / only baseline, p |", "|---|---|---|---|---|"]
    reference = by_variant[baseline]
    for variant, seeds in by_variant.items():
        common = sorted(set(seeds) & set(reference))
        if variant == baseline or not common:
            continue
        ours = [100 * seeds[s]["accuracy"] for s in common]
        theirs = [100 * reference[s]["accuracy"] for s in common]
        per_seed = ", ".join(f"s{s} {a - b:+.1f}" for s, a, b in zip(common, ours, theirs))
        if len(common) >= 2:
            test = paired_comparison(ours, theirs)
            summary, clear = test.describe(), "yes" if test.clear else "no"
        else:
            summary, clear = "-", "- (one seed)"
        tests = []
        for s in common:
            a, b = seeds[s].get("answers_correct"), reference[s].get("answers_correct")
            if a and b:
                tests.append(f"s{s} {mcnemar_exact(correctness_from_text(a), correctness_from_text(b)).describe()}")
        lines.append(f"| {variant} | {per_seed} | {summary} | {clear} | {'; '.join(tests) or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="memory_accuracy.json files")
    parser.add_argument("--baseline", default=None, help="compare every other variant with this one, seed by seed")
    args = parser.parse_args(argv)
    by_variant = collect(args.reports)
    table = markdown(by_variant)
    if args.baseline:
        table += "\n\n" + paired_markdown(by_variant, args.baseline)
    print(table)
    return table


if __name__ == "__main__":
    main()
