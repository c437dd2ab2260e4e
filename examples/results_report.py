# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""examples/RESULTS.md and its figures (examples/results/*.png), written from examples/results/runs.jsonl.

Statistics (`harness.statistics`): every accuracy comes with the binomial standard error of its question count; two
methods are compared per seed (same data order, same questions), and a gap is called clear only when the 95%
confidence interval of the mean paired difference (Student's t, seeds - 1 degrees of freedom) excludes 0; a
comparison tested again after more seeds were added needs its 97.5% interval to exclude 0 (`SECOND_LOOK_CONFIDENCE`).
One seed gives no such test: its gaps are reported, never called clear.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from pathlib import Path

from harness.evaluation import correctness_from_text
from harness.statistics import HalfUp, binomial_se, holm, mcnemar_exact, paired_comparison, t_critical

from .results_plan import (
    BATCH_SIZE,
    CURVE_EVERY,
    DROPIN_RECIPE,
    DROPIN_SCORE_SCALE,
    DROPIN_VARIANTS,
    FULL_LRS,
    GRID_LRS,
    GRID_STEPS,
    HEADLINE_REFERENCE,
    LOGGING_STEPS,
    LONG_EXTRA_SEED_GROUPS,
    LONG_SEEDS,
    LORA_LRS,
    MASK_THRESHOLDS,
    MAX_ATTEMPTS,
    MFT_INIT_T,
    MFT_LRS,
    MIN_LEVEL_SHARE,
    MORE_SEEDS,
    REPORT_FILE,
    RESULTS_DIR,
    SEEDS,
    STEPS,
    TABLE1_GROUPS,
    TEST_QUESTIONS,
    VAL_QUESTIONS,
    Plan,
    accuracy,
    accuracy_at,
    dropin_spec,
    finished,
    given_up,
    grid_specs,
    hard_levels,
    hard_long_specs,
    hard_specs,
    last_failures,
    layer_specs,
    long_spec,
    main_specs,
    pending,
    plan,
    recorded_answers,
    retired,
    run_key,
    slug,
    spec,
    sweep_specs,
)


CURVES_PNG = RESULTS_DIR / "curves.png"
SECOND_LOOK_CONFIDENCE = 0.975  # a comparison tested again after more seeds spends 2.5% more, not 5% (Bonferroni)


def model_builds_line(runs: dict[str, dict]) -> str:
    """How many finished runs used each build of the embedded model (recorded since 2026-12-02; earlier: unknown)."""
    counts: dict[str, int] = {}
    for run in runs.values():
        build = run.get("model_build")
        name = (f"weights {build['sha256']} (stage-1 loss {HalfUp(build['stage1_train_loss']):.4f})" if build
                else "not recorded (runs before 2026-12-02)")
        counts[name] = counts.get(name, 0) + 1
    caveat = ". Runs of one seed compared across builds start from slightly different projectors."
    leaky = sum(1 for run in runs.values() if (run.get("model_build") or {}).get("assembly", 1) < 2)
    leak = (f" {leaky} of these runs used a build whose stage 1 aligned the projector on captions that included the "
            "held-back validation images (assembly version 1; fixed in version 2): their validation accuracy, and the "
            "choices made on it (learning rates, best checkpoints), rest on images stage 1 had seen; no test image "
            "was seen." if leaky else "")
    return "; ".join(f"{name}: {count} run{'s' * (count != 1)}" for name, count in sorted(counts.items())) + (
        caveat if len(counts) > 1 else ".") + leak


def progress_line(specs: list[dict], all_runs: list[dict], pick: dict | None) -> str:
    """How many planned runs finished, the pending ones by name (each one's folder under outputs/results/) in the
    order the runner takes them, and the ones it gave up on (`given_up`: failed `MAX_ATTEMPTS` times), so a reader
    sees which rows still wait for which runs and which wait for a person."""
    done, skipped = finished(all_runs), given_up(all_runs)
    waiting = [slug(s) for s in pending(specs, all_runs)]
    failed = [slug(s) for s in specs if run_key(s) in skipped and run_key(s) not in done]
    text = f"- Progress: {sum(run_key(s) in done for s in specs)} of {len(specs)} planned runs finished"
    if not pick:
        text += " (the main runs are planned once the sweeps are done)"
    text += f"; pending, in the runner's order: {', '.join(f'`{name}`' for name in waiting)}" if waiting else ""
    if failed:
        text += (f"; failed {MAX_ATTEMPTS} times, so the runner skips them until a re-run record (`--rerun`; each "
                 f"log is log.txt in the run's folder): {', '.join(f'`{name}`' for name in failed)}")
    return text + "."


def emulated_kernels_note(runs: dict[str, dict]) -> str:
    """How many finished runs trained on emulated bf16 kernels (`harness.precision`). Records say so since
    2026-12-03; earlier ones ran native kernels (the runner then refused CPUs without them)."""
    emulated = sum(run["result"].get("precision", "").endswith("emulated kernels") for run in runs.values())
    return (f"{emulated} of {len(runs)} runs on a CPU without native bf16, with its matrix products emulated: fp32 "
            "arithmetic on the same bf16 values, bf16 results, the roundings of a native kernel; "
            "`harness.precision`, checked in benchmarks/README.md" if emulated
            else "native bf16 kernels in every run")


def answer_logits_note(runs: dict[str, dict]) -> str:
    """How many finished runs computed the LM head only at answer positions (`harness.answer_loss`, since
    2026-12-03; records say so): the same loss, less time and tensor memory per step than at every position."""
    answers = sum(run["result"].get("lm_head_positions") == "answers" for run in runs.values())
    where = f"{answers} of {len(runs)} runs" if answers < len(runs) else "every run"
    return (f"{where} computed the LM head only at answer positions (`harness.answer_loss`: the same loss, less time "
            "and tensor memory per step), the others at every position" if answers
            else "the LM head ran at every position in every run")


def resumed_runs_note(runs: dict[str, dict]) -> str:
    """How many finished runs were interrupted and resumed from a checkpoint (`harness.run_state`, since 2026-12-03;
    records say where): the same weights, curve and answers as a run that never stopped (tested)."""
    resumed = [run for run in runs.values() if run["result"].get("resumed_at_steps")]
    if not resumed:
        return "no run was resumed from a checkpoint"
    return (f"{len(resumed)} of {len(runs)} runs resumed from a checkpoint after an interruption "
            "(`harness.run_state`: the same weights, curve and answers as a run that never stopped; its seconds "
            "leave out the work lost after the last checkpoint)")


def more_seed_rows(planned: Plan) -> list[str]:
    """The Table 1 rows the plan gives `MORE_SEEDS` (`more_seed_specs`), in plan order, each once."""
    return list(dict.fromkeys(_label(s["method"], s["targets"]) for s in planned.specs if s["seed"] in MORE_SEEDS))


def more_seeds_note(planned: Plan) -> str:
    """' (also ...)' naming `MORE_SEEDS` when the plan gives them to any row (`more_seed_rows`), else ''."""
    if not more_seed_rows(planned):
        return ""
    return (f" (also {', '.join(map(str, MORE_SEEDS))} for the long headline rows whose comparison was within the "
            f"noise at {len(SEEDS)})")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "pending"
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else float("nan")
    n = f" (n={len(values)})" if len(values) != len(SEEDS) else ""
    return f"{HalfUp(mean):.1f} ± {HalfUp(std):.1f}{n}" if not math.isnan(std) else f"{HalfUp(mean):.1f}{n}"


def _fmt_params(n: float) -> str:
    return f"{HalfUp(n / 1e6):.2f}M"


def _fmt_mib(n: float) -> str:
    return f"{HalfUp(n / 2**20):.1f} MiB"


def _seed_results(runs: dict[str, dict], specs: list[dict]) -> list[dict]:
    return [runs[run_key(s)]["result"] for s in specs if run_key(s) in runs]


def _runs_by_seed(runs: dict[str, dict], specs: list[dict]) -> dict[int, dict]:
    """Seed -> the finished run of each of `specs` (one per seed)."""
    return {s["seed"]: runs[run_key(s)] for s in specs if run_key(s) in runs}


def _row(label: str, hp: str, results: list[dict]) -> str:
    if not results:
        return f"| {label} | {hp} | pending | | | | | | |"
    acc = _mean_std([r["accuracy"] for r in results])
    merged = [r["merged_accuracy"] for r in results if r.get("merged_accuracy") is not None]
    merged_text = _mean_std(merged) if merged else "n/a (full model)"
    same = [r.get("merged_identical_predictions") for r in results if "merged_identical_predictions" in r]
    if same:
        differing = [r.get("merged_differing_predictions", 0) for r in results
                     if r.get("merged_identical_predictions") is False]
        merged_text += "" if all(same) else (f" ({'+'.join(map(str, differing))} of {results[0]['eval_questions']} "
                                             f"answers differ, in {len(differing)} seed(s))")
    r0 = results[0]
    loss = statistics.mean(r["loss_history"][-1]["loss"] for r in results)
    step = statistics.median(r["median_step_seconds"] for r in results)
    peak = max(r["peak_memory_bytes"] for r in results) / 2**30
    return (f"| {label} | {hp} | {acc} | {merged_text} | {HalfUp(loss):.2f} | "
            f"{_fmt_params(r0['trainable_parameters'])} | {_fmt_mib(r0['saved_bytes'])} | {HalfUp(step):.2f} | "
            f"{HalfUp(peak):.2f} |")


def _group(pick: dict, method: str, targets: str) -> list[dict]:
    """The 32-step runs (every seed) of one Table 1 row."""
    return [s for s in main_specs(pick) if s["method"] == method and s["targets"] == targets]


def _hyperparameters(pick: dict, method: str) -> str:
    if method in ("mft", "mft-ste"):
        m = pick["mft"]
        return f"lr {m['lr']:g}, init {m['init_score']:g}, T {m['temperature']:g}"
    return f"lr {pick['lora' if method in ('lora', 'qlora') else 'full']['lr']:g}"


def t_values(most_seeds: int) -> str:
    """'4.30 for 3 seeds, 3.18 for 4, ...': the 95% critical t from `SEEDS`' count up to `most_seeds` seeds."""
    counts = range(len(SEEDS), most_seeds + 1)
    return ", ".join(f"{HalfUp(t_critical(n - 1)):.2f} for {n}" + (" seeds" if n == len(SEEDS) else "")
                     for n in counts)


def paired_rows(by_seed: dict[str, dict[int, float]], reference: str,
                first_look: int | None = None) -> dict[str, tuple[list[int], str, str, float | None]]:
    """Per row of a paired table: (seeds shared with `reference`, the per-seed difference cells, "mean ± CI" text,
    the paired t-test's p-value (doubled for a second look, see `paired_table`), or None when untested)."""
    seeds = sorted(by_seed[reference])
    rows = {}
    for label, accuracies in by_seed.items():
        if label == reference:
            continue
        common = [s for s in seeds if s in accuracies]
        cells = " | ".join(f"{HalfUp(100 * (accuracies[s] - by_seed[reference][s])):+.1f}" if s in accuracies else ""
                           for s in seeds)
        summary, p_value = "", None
        if len(common) >= 2:
            points, reference_points = ([100 * accuracies[s] for s in common],
                                        [100 * by_seed[reference][s] for s in common])
            test = paired_comparison(points, reference_points)
            summary = test.describe()
            looks = 1
            if first_look is not None and len(common) > first_look:
                second = paired_comparison(points, reference_points, confidence=SECOND_LOOK_CONFIDENCE)
                summary += f" (± {HalfUp(second.half_width):.1f})"
                looks = 2  # Bonferroni over the two looks: the p-value counts twice
            p_value = min(1.0, test.p_value * looks)
        rows[label] = (common, cells, summary, p_value)
    return rows


def paired_table(by_seed: dict[str, dict[int, float]], reference: str, what: str,
                 answers: dict[str, dict[int, str]] | None = None, explain: bool = True,
                 first_look: int | None = None, family: dict[str, float] | None = None) -> list[str]:
    """Markdown: each row's per-seed accuracy minus `reference`'s on the seeds both have (same data order and
    questions, so the differences are paired), with the mean and its 95% t interval, and the paired t-test's p-value
    (`paired_rows`; doubled for a row with more seeds than `first_look`, a second look at a comparison that got more
    seeds because it was within the noise). "Clear" when Holm's rule rejects it among this table's tests and the
    p-values in `family` (the other tests of the same family, e.g. the other point of the same runs). With `answers`
    (label -> seed -> per-question correctness), McNemar's exact test per seed as well. `explain=False` for a table
    that follows one that explained the tests."""
    seeds = sorted(by_seed[reference])
    answers = answers or {}
    mcnemar = any(answers.values())
    intro = f"Paired by seed: {what} minus {reference}'s, in points."
    if not explain:
        intro += " Same tests as above."
    else:
        intro += (f" Mean ± the half-width of its 95% confidence interval (paired t-test, seeds - 1 degrees of "
                  f"freedom: t = {t_values(max(len(seeds), len(SEEDS)))}). 'Clear' (a difference detected): Holm's "
                  "step-down rule rejects 'no difference' at a family-wise 5% over "
                  + ("this table's and the next table's comparisons" if family else "this table's comparisons")
                  + ", on the paired t-test's p-values shown beside. 'No difference detected' is not a finding "
                  "that the two are equal (no equivalence test is made): the interval shows how large a difference "
                  "these seeds leave open.")
        if mcnemar:
            intro += (" McNemar: per seed, the test questions only this run / only the reference run answered, and "
                      "the exact test's p-value; it asks whether these two trained models differ on such questions, "
                      "not whether the methods do (seed-to-seed variation is outside it), so it decides nothing "
                      "about 'clear'.")
        if first_look is not None:
            intro += (f" A row with more than {first_look} seeds is a second look at a comparison that was within "
                      f"the noise at {first_look}: its p-value counts twice (Bonferroni over the two looks; its "
                      f"{100 * SECOND_LOOK_CONFIDENCE:g}% interval is in brackets), where a second test at 5% would "
                      "allow a false 'clear' up to 10% of the time.")
    interval = "mean ± 95% CI" + (f" ({100 * SECOND_LOOK_CONFIDENCE:g}% CI)" if first_look is not None else "")
    lines = ["", intro, "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + f" | {interval} | clear |"
             + (" McNemar per seed |" if mcnemar else ""),
             "|---|" + "---|" * (len(seeds) + 2 + mcnemar)]
    rows = paired_rows(by_seed, reference, first_look)
    tests = {label: p for label, (_, _, _, p) in rows.items() if p is not None}
    others = list((family or {}).values())
    decisions = holm(list(tests.values()) + others) if tests else []
    detected = dict(zip(tests, decisions))
    for label, (common, cells, summary, _) in rows.items():
        if label not in tests:
            verdict = f"not tested ({len(common)} seed)"
        else:
            verdict = f"{'yes' if detected[label] else 'no difference detected'} (p {HalfUp(tests[label]):.3f})"
        row = f"| {label} | {cells} | {summary} | {verdict} |"
        if mcnemar:
            ours, theirs = answers.get(label, {}), answers.get(reference, {})
            paired = [(s, correctness_from_text(ours[s]), correctness_from_text(theirs[s]))
                      for s in common if s in ours and s in theirs]
            tests_text = [f"s{s} {mcnemar_exact(a, b).describe()}" for s, a, b in paired]
            row += " " + ("; ".join(tests_text) or "-") + " |"
        lines.append(row)
    return lines


def paired_differences(runs: dict[str, dict], pick: dict) -> list[str]:
    """The 32-step Table 1 rows against the best one, once every row has all seeds."""
    by_seed = {}
    for label, method, targets in TABLE1_GROUPS:
        group = _group(pick, method, targets)
        if not all(run_key(s) in runs for s in group):
            return []
        by_seed[label] = {s["seed"]: runs[run_key(s)]["result"]["accuracy"] for s in group}
    best = max(by_seed, key=lambda label: statistics.mean(by_seed[label].values()))
    return paired_table(by_seed, best, "test accuracy")


def mask_table(analysis: dict, title: str) -> list[str]:
    """Markdown: share of mask values below each threshold, overall and per projection type."""
    lines = ["", title, "", "Share of mask values below each threshold, overall and per projection type "
             "(`peft_mft.tools.analysis.analyze_masks`; masks normalised so that 1 = the initial mask).", ""]
    projections = list(analysis["levels"][0]["by_projection"])
    lines += ["| threshold | overall | " + " | ".join(projections) + " |", "|---|---|" + "---|" * len(projections)]
    for level in analysis["levels"]:
        lines.append(f"| M < {level['threshold']:g} | {HalfUp(100 * level['share']):.4f}% | "
                     + " | ".join(f"{HalfUp(100 * level['by_projection'][p]):.4f}%" for p in projections) + " |")
    overall = analysis.get("overall", {})
    if overall:
        lines += ["", "Mask values overall: " + ", ".join(
            f"{k} {v:.4g}" for k, v in overall.items() if isinstance(v, float)) + "."]
    if analysis.get("plot"):
        plot = analysis["plot"]
        lines += ["", f"![masks]({Path(plot['path']).relative_to('examples')}) Near-zero share per projection type "
                  f"(the paper's Fig. 6 view), histogram and layer map at M < {plot['threshold']:g}."]
    return lines


def _label(method: str, targets: str) -> str:
    """The Table 1 row name of (method, targets)."""
    return next(label for label, m, t in TABLE1_GROUPS if (m, t) == (method, targets))


def _cell(values: list[float], n_questions: int) -> str:
    """Mean ± std over seeds (%), or one run ± its binomial s.e."""
    if not values:
        return "pending"
    if len(values) == 1:
        se = HalfUp(100 * binomial_se(values[0], n_questions))
        return f"{HalfUp(100 * values[0]):.1f} (1 seed, ± {se:.1f} s.e.)"
    mean, std = HalfUp(100 * statistics.mean(values)), HalfUp(100 * statistics.stdev(values))
    return f"{mean:.1f} ± {std:.1f} ({len(values)} seeds)"


def easy_vqa_question_types() -> list[str] | None:
    """The type of each of the first `TEST_QUESTIONS` easy-vqa test questions, in the order runs answer them
    ("yes/no", "colour", "shape", from the reference answer), or None where easy-vqa is not installed."""
    try:
        from harness.easyvqa import COLORS, SHAPES, prepare_easy_vqa

        records = json.loads(Path(prepare_easy_vqa()["test"]).read_text())[:TEST_QUESTIONS]
    except (ImportError, OSError):  # easy-vqa not installed, or its files not built here
        return None
    answers = [record["conversations"][1]["value"] for record in records]
    return ["colour" if a in COLORS else "shape" if a in SHAPES else "yes/no" for a in answers]


def question_type_table(by_label: dict[str, dict[int, dict]], all_runs: list[dict]) -> list[str]:
    """Markdown: test accuracy at the end per question type, mean over each row's seeds with recorded answers."""
    types = easy_vqa_question_types()
    answered = {label: [a["end"] for run in seed_runs.values() if (a := recorded_answers(all_runs, run))
                        and len(a.get("end", "")) == TEST_QUESTIONS] for label, seed_runs in by_label.items()}
    if types is None or not any(answered.values()):
        return []
    kinds = sorted(set(types), key=types.index)
    lines = ["", f"Test accuracy at the end per question type (%, mean over the seeds; {TEST_QUESTIONS} questions: "
             + ", ".join(f"{types.count(k)} {k}" for k in kinds) + "). One question is 1 / n of its column.", "",
             "| method | seeds | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for label, texts in answered.items():
        if not texts:
            continue
        cells = []
        for kind in kinds:
            positions = [i for i, t in enumerate(types) if t == kind]
            share = statistics.mean(sum(text[i] == "1" for i in positions) / len(positions) for text in texts)
            cells.append(f"{HalfUp(100 * share):.1f}")
        lines.append(f"| {label} | {len(texts)} | " + " | ".join(cells) + " |")
    return lines


def paired_long_tables(by_label: dict[str, dict[int, dict]], reference: str, all_runs: list[dict],
                       first_look: int | None = None) -> list[str]:
    """`paired_table` of long runs (label -> seed -> run) against `reference`, at the best validation checkpoint and
    at the end (so the end column's gaps get the same test), with McNemar from the recorded answers."""
    recorded = {label: {seed: recorded_answers(all_runs, run) for seed, run in seed_runs.items()}
                for label, seed_runs in by_label.items()}
    points = (("best", "test accuracy at the best validation checkpoint"), ("end", "test accuracy at the end"))
    accuracy = {point: {label: {seed: accuracy_at(run["result"], point) for seed, run in seed_runs.items()}
                        for label, seed_runs in by_label.items()} for point, _ in points}
    # one family: every comparison at both points (a gap tested at the best checkpoint and at the end is two tests)
    p_values = {point: {label: p for label, (*_, p) in paired_rows(accuracy[point], reference, first_look).items()
                        if p is not None} for point, _ in points}
    lines = []
    for point, what in points:
        answers = {label: {seed: stored[point] for seed, stored in seed_answers.items() if stored and point in stored}
                   for label, seed_answers in recorded.items()}
        family = {f"{other} {label}": p for other, _ in points if other != point
                  for label, p in p_values[other].items()}
        lines += paired_table(accuracy[point], reference, what, answers, explain=point == "best",
                              first_look=first_look, family=family)
    return lines


def long_table(planned: Plan, runs: dict[str, dict], all_runs: list[dict]) -> list[str]:
    """Markdown: the long Table 1 rows at the best validation checkpoint and at the end, time to best, memory."""
    steps = planned.long_steps
    lines = ["", f"## Long runs ({steps} steps): Table 1 analogue (test accuracy, %)", "",
             f"Test accuracy on {TEST_QUESTIONS} questions at the checkpoint with the best validation accuracy (every "
             f"{CURVE_EVERY} steps, {VAL_QUESTIONS} validation questions) and at the end. 'To best': optimizer steps "
             "and training seconds (validation time excluded) until that checkpoint, the paper's Epoch and Time "
             "columns; median over seeds. The best checkpoint is the first curve point with the highest validation "
             "accuracy: a later point that ties it (often step 640) does not move it. Figures are rounded half away "
             "from zero. Hyperparameters: the short-run sweeps' picks.", "",
             "| method | hyperparameters | test acc at best val | test acc at end | steps to best | seconds to best | "
             "train seconds (all steps) | peak RSS (GiB) | tensor memory (GiB) |", "|---" * 9 + "|"]
    for label, method, targets in TABLE1_GROUPS:
        results = [runs[key]["result"] for seed in LONG_SEEDS
                   if (key := run_key(long_spec(planned.pick, method, targets, seed, steps))) in runs]
        hp = _hyperparameters(planned.pick, method)
        if not results:
            lines.append(f"| {label} | {hp} | pending | | | | | | |")
            continue
        at_best = [r["best_checkpoint"]["accuracy"] for r in results]
        at_end = [r["accuracy"] for r in results]
        to_best = statistics.median(r["best_checkpoint"]["step"] for r in results)
        seconds = statistics.median(r["best_checkpoint"]["train_seconds"] for r in results)
        total = statistics.median(r["train_seconds"] for r in results)
        peak = max(r["peak_memory_bytes"] for r in results) / 2**30
        tensors = [r["tensor_memory"]["peak"] / 2**30 for r in results if r.get("tensor_memory")]
        lines.append(f"| {label} | {hp} | {_cell(at_best, TEST_QUESTIONS)} | {_cell(at_end, TEST_QUESTIONS)} | "
                     f"{to_best:g} | {HalfUp(seconds):.0f} | {HalfUp(total):.0f} | {HalfUp(peak):.2f} | "
                     + (f"{HalfUp(max(tensors)):.2f} |" if tensors else "- |"))
    headline = {}
    for method, targets in LONG_EXTRA_SEED_GROUPS:
        specs = [long_spec(planned.pick, method, targets, seed, steps) for seed in LONG_SEEDS]
        headline[_label(method, targets)] = _runs_by_seed(runs, specs)
    reference = _label(*HEADLINE_REFERENCE)
    more = more_seed_rows(planned)
    if len(headline[reference]) >= 2:
        lines += paired_long_tables(headline, reference, all_runs, first_look=len(SEEDS) if more else None)
    lines += question_type_table(headline, all_runs)
    if more:
        lines += ["", f"Seeds {', '.join(map(str, MORE_SEEDS))} of {', '.join(more)}: added because "
                  f"at {len(SEEDS)} seeds a comparison with {reference} was within the noise (`more_seed_specs`); "
                  "the tests above over every finished seed are a second look at the same comparison, with the "
                  "stricter rule they state."]
    lines += ["", f"![learning curves]({CURVES_PNG.relative_to(REPORT_FILE.parent)}) Validation accuracy per method "
              "(mean over seeds, band: min to max) and training loss."]
    return lines


def _best_end(run: dict | None) -> str:
    """A run's validation curve: its best point / its last point (%); the end alone for a run without a curve; '…'
    while the run is pending."""
    if run is None:
        return "…"
    if "curve" not in run["result"]:
        return f"{HalfUp(100 * run['result']['accuracy']):.1f}"
    curve = [point["val_accuracy"] for point in run["result"]["curve"]]
    return f"{HalfUp(100 * max(curve)):.1f} / {HalfUp(100 * curve[-1]):.1f}"


def grid_section(runs: dict[str, dict], pick: dict) -> list[str]:
    """Markdown: the (init, T) x lr grid on validation, best point of each curve and the end; once complete, its best
    cell beside the setting the short sweeps picked (`pick`, which the long runs and the library's defaults use)."""
    lines = ["", f"## S-MFT (init, T) x learning rate ({GRID_STEPS} steps, validation accuracy %, seed 0)", "",
             f"Best validation point of the curve / at the end ({VAL_QUESTIONS} questions, s.e. ~"
             f"{HalfUp(100 * binomial_se(0.9, VAL_QUESTIONS)):.1f} at 90%). A check, at 5x the length, of the "
             f"setting the {STEPS}-step sweeps picked.", "",
             "| init, T (M0) | " + " | ".join(f"lr {lr:g}" for lr in GRID_LRS) + " |",
             "|---|" + "---|" * len(GRID_LRS)]
    grid = {(s["init_score"], s["temperature"], s["lr"]): runs.get(run_key(s)) for s in grid_specs()}
    top = {cell: max(point["val_accuracy"] for point in run["result"]["curve"]) for cell, run in grid.items() if run}
    for (i, t) in MFT_INIT_T:
        cells = [_best_end(grid[(i, t, lr)]) for lr in GRID_LRS]
        lines.append(f"| {i:g}, {t:g} ({HalfUp(1 / (1 + math.exp(-i / t))):.4f}) | " + " | ".join(cells) + " |")
    m = pick["mft"]
    picked = (m["init_score"], m["temperature"], m["lr"])
    if len(top) == len(grid) and picked in top:
        i, t, lr = best = max(top, key=top.get)
        lines += ["", f"Best cell: init {i:g}, T {t:g}, lr {lr:g} ({HalfUp(100 * top[best]):.1f}); the picked "
                  f"setting, init {picked[0]:g}, T {picked[1]:g}, lr {picked[2]:g}: {HalfUp(100 * top[picked]):.1f}. "
                  "One seed, so a "
                  "gap between cells is not tested (each cell's s.e. is above)."]
    return lines


def pick_sentence(what: str, picked: float, deciding: list[dict], runs: dict[str, dict]) -> str:
    """Which lr a check (`deciding`, one length) picked for `what`, beside the others' end accuracy and the
    per-point s.e. (one seed: the gap is not tested)."""
    ends = {s["lr"]: runs[run_key(s)]["result"]["accuracy"] for s in deciding}
    others = ", ".join(f"{HalfUp(100 * accuracy):.1f} at lr {lr:g}" for lr, accuracy in ends.items() if lr != picked)
    se = 100 * binomial_se(ends[picked], VAL_QUESTIONS)
    runner_up = max((lr for lr in ends if lr != picked), key=ends.get)
    return (f"Picked for {what}: lr {picked:g}, validation {HalfUp(100 * ends[picked]):.1f} at the end ({others}); "
            f"one seed, each point ± {HalfUp(se):.1f} s.e., so the gap to the runner-up (lr {runner_up:g}) is not "
            "tested: the choice between them is the rule's, not a measured advantage.")


def hard_long_section(planned: Plan, runs: dict[str, dict], all_runs: list[dict]) -> list[str]:
    """Markdown: H-MFT at the levels read off the long S-MFT masks, its learning-rate checks, and any long H-MFT test
    run the plan no longer holds (its lr came from an earlier check), so no measurement drops out of the report."""
    lines = ["", "## Long runs: S-MFT vs H-MFT at the levels its masks suggest (test accuracy, %)", ""]
    if not planned.long_levels:
        lines.append("pending: needs the mask analysis of a long S-MFT Both run." if planned.long_analysis is None else
                     f"Not run: fewer than {100 * MIN_LEVEL_SHARE:g}% of the long S-MFT Both masks fall below any "
                     f"threshold up to {MASK_THRESHOLDS[-1]:g}.")
        return lines
    check, main = hard_long_specs(planned.long_steps, planned.long_levels, planned.hard_pick)
    lrs = sorted({s["lr"] for s in check})
    lines += [f"Levels s x (0.5, 1, 2), s = share of the long S-MFT Both masks below {planned.long_threshold:g} (the "
              "paper's procedure). H-MFT scores start at |W| / mean |W| per matrix (docs/method.md). Learning rate "
              f"checked on validation at the middle level (best point of the curve / end, {VAL_QUESTIONS} questions, "
              f"seed 0; at {STEPS} steps the end only); the check at {planned.long_steps} steps picks it for these "
              f"runs, the one at {STEPS} steps for short runs such as make demo's (by the end accuracy):", "",
              "| steps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for length in sorted({s["steps"] for s in check}):
        by_lr = {s["lr"]: s for s in check if s["steps"] == length}
        lines.append(f"| {length} | " + " | ".join(_best_end(runs.get(run_key(by_lr[lr]))) if lr in by_lr else ""
                                                 for lr in lrs) + " |")
    for what, picked, length in ((f"the {planned.long_steps}-step runs", planned.hard_pick, planned.long_steps),
                                 (f"{STEPS}-step runs and make demo", planned.hard_short_pick, STEPS)):
        if picked:
            deciding = [s for s in check if s["steps"] == length]
            lines += ["", pick_sentence(what, picked["lr"], deciding, runs)]
    lines += ["", "| variant | test acc at best val | test acc at end | final train loss |", "|---|---|---|---|"]
    by_level = {f"H-MFT {100 * level:.3g}% zeroed": _runs_by_seed(runs, [s for s in main if s["sparsity"] == level])
                for level in planned.long_levels}
    for label, seed_runs in by_level.items():
        results = [run["result"] for run in seed_runs.values()]
        loss = f"{HalfUp(statistics.mean(r['loss_history'][-1]['loss'] for r in results)):.2f}" if results else ""
        at_best = _cell([r["best_checkpoint"]["accuracy"] for r in results], TEST_QUESTIONS)
        at_end = _cell([r["accuracy"] for r in results], TEST_QUESTIONS)
        lines.append(f"| {label} | {at_best} | {at_end} | {loss} |")
    reference = _label("mft", "both")
    source = _runs_by_seed(runs, [long_spec(planned.pick, "mft", "both", seed, planned.long_steps) for seed in SEEDS])
    by_label = {label: seed_runs for label, seed_runs in {reference: source, **by_level}.items() if seed_runs}
    if by_label.get(reference) and len(by_label) > 1:
        lines += paired_long_tables(by_label, reference, all_runs)
    planned_keys = {run_key(s) for s in main}
    superseded = [r for key, r in runs.items() if key not in planned_keys and r["spec"]["phase"] == "L"
                  and r["spec"]["method"] == "mft-hard" and r["spec"]["split"] == "test"]
    if superseded:
        lines += ["", "Long H-MFT test runs at a learning rate an earlier check picked (kept for the record):", "",
                  "| variant | lr | seed | validation best / end | test acc at best val | test acc at end "
                  "| final train loss |", "|---|---|---|---|---|---|---|"]
        for run in superseded:
            s, r = run["spec"], run["result"]
            lines.append(f"| H-MFT {100 * s['sparsity']:.3g}% zeroed | {s['lr']:g} | {s['seed']} | {_best_end(run)} | "
                         f"{_cell([r['best_checkpoint']['accuracy']], TEST_QUESTIONS)} | "
                         f"{_cell([r['accuracy']], TEST_QUESTIONS)} | {HalfUp(r['loss_history'][-1]['loss']):.2f} |")
    return lines


def layer_section(planned: Plan, runs: dict[str, dict]) -> list[str]:
    """Markdown: S-MFT Both on all decoder layers against one third of them (seed 0)."""
    lines = ["", f"## Layer ranges (S-MFT Both, {planned.long_steps} steps, seed 0, test accuracy %)", "",
             "The projector is masked in every row; the rows differ in which decoder layers are. One seed each, so "
             "each cell carries its binomial s.e. and no gap is called clear.", "",
             "| layers | trained scores | test acc at best val | test acc at end | steps to best |",
             "|---|---|---|---|---|"]
    rows = [("all", long_spec(planned.pick, "mft", "both", 0, planned.long_steps))]
    rows += [(f"{s['layers']} third", s) for s in layer_specs(planned.pick, planned.long_steps)]
    for name, s in rows:
        run = runs.get(run_key(s))
        if run is None:
            lines.append(f"| {name} | | pending | | |")
            continue
        r = run["result"]
        lines.append(f"| {name} | {HalfUp(r['trainable_parameters'] / 1e6):.2f}M | "
                     f"{_cell([r['best_checkpoint']['accuracy']], TEST_QUESTIONS)} | "
                     f"{_cell([r['accuracy']], TEST_QUESTIONS)} | {r['best_checkpoint']['step']} |")
    return lines


def dropin_section(planned: Plan, runs: dict[str, dict], all_runs: list[dict]) -> list[str]:
    """Markdown: phase D, S-MFT Both trained through the optimizer Trainer builds at pipelines' rates, paired by seed
    with the recipe; each pair on the same model build (the build column says which)."""
    steps = planned.long_steps
    lines = ["", f"## Drop-in learning rates (S-MFT Both, score_scale {DROPIN_SCORE_SCALE:g}, {steps} steps)", "",
             "S-MFT Both as a user who swaps LoraConfig for MFTConfig trains it: the AdamW `transformers.Trainer` "
             "builds itself (no weight decay), at the rates pipelines use; against the recipe, "
             "`create_mft_optimizer` at a score step of "
             f"{planned.pick['mft']['lr']:g}. Same schedule, batch and data as the long runs above.", "",
             "| training | optimizer learning rate | test acc at best val | test acc at end | steps to best | "
             "builds |",
             "|---|---|---|---|---|---|"]
    by_label = {}
    for label, optimizer, lr in DROPIN_VARIANTS:
        specs = [dropin_spec(planned.pick, optimizer, lr, seed, steps) for seed in SEEDS]
        by_label[label] = _runs_by_seed(runs, specs)
        rate = f"{planned.pick['mft']['lr'] / DROPIN_SCORE_SCALE:.3g} (score step {planned.pick['mft']['lr']:g})" \
            if lr is None else f"{lr:g}"
        results = [run["result"] for run in by_label[label].values()]
        if not results:
            lines.append(f"| {label} | {rate} | pending | | | |")
            continue
        builds = sorted({run.get("model_build", {}).get("sha256", "?") for run in by_label[label].values()})
        at_best = _cell([r["best_checkpoint"]["accuracy"] for r in results], TEST_QUESTIONS)
        lines.append(f"| {label} | {rate} | {at_best} | {_cell([r['accuracy'] for r in results], TEST_QUESTIONS)} | "
                     f"{statistics.median(r['best_checkpoint']['step'] for r in results):g} | {', '.join(builds)} |")
    if len(by_label[DROPIN_RECIPE]) >= 2:
        lines += paired_long_tables(by_label, DROPIN_RECIPE, all_runs)
    return lines


def long_sections(planned: Plan, runs: dict[str, dict], all_runs: list[dict]) -> list[str]:
    """Everything phase L produced so far, and the curves PNG."""
    if not planned.long_steps:
        return []
    write_curves_png(planned, runs)
    lines = long_table(planned, runs, all_runs) + grid_section(runs, planned.pick)
    lines += hard_long_section(planned, runs, all_runs)
    lines += layer_section(planned, runs)
    lines += dropin_section(planned, runs, all_runs)
    if planned.long_analysis:
        seed = json.loads(planned.long_analysis["source_key"])["seed"]
        lines += mask_table(planned.long_analysis,
                            f"## Learned S-MFT masks after {planned.long_steps} steps (Both, seed {seed})")
        lines += mask_seeds_table(planned.long_analyses, planned.long_threshold)
    return lines


def mask_seeds_table(analyses: dict[int, dict], threshold: float | None) -> list[str]:
    """Markdown: the share below `threshold` per projection type for every seed's masks, and each seed's order of
    the projection types, so a reader sees whether the Fig. 6 pattern repeats across seeds."""
    if len(analyses) < 2 or threshold is None:
        return []
    level = {seed: next(lv for lv in a["levels"] if lv["threshold"] == threshold) for seed, a in analyses.items()}
    projections = list(next(iter(level.values()))["by_projection"])
    lines = ["", f"The same share (M < {threshold:g}) in every seed whose masks were analysed, and the projection "
             "types ordered from most to least masked:", "",
             "| seed | overall | " + " | ".join(projections) + " | order |",
             "|---|---|" + "---|" * len(projections) + "---|"]
    for seed, lv in level.items():
        share = lv["by_projection"]
        order = " > ".join(sorted(projections, key=lambda p: -share[p]))
        cells = " | ".join(f"{HalfUp(100 * share[p]):.4f}%" for p in projections)
        lines.append(f"| {seed} | {HalfUp(100 * lv['share']):.4f}% | {cells} | {order} |")
    plots = [f"[seed {seed}]({Path(a['plot']['path']).relative_to('examples')})" for seed, a in analyses.items()
             if a.get("plot")]
    return lines + (["", "Plots: " + ", ".join(plots) + "."] if plots else [])


def write_curves_png(planned: Plan, runs: dict[str, dict]) -> Path:
    """`CURVES_PNG`: validation accuracy against optimizer steps for every long Table 1 row (mean over its seeds,
    band from the lowest to the highest seed), and the training loss (mean over seeds)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    figure = Figure(figsize=(12.0, 4.8), layout="constrained")
    accuracy_ax, loss_ax = figure.subplots(1, 2)
    styles = ("-", "--", "-.", ":")
    for index, (label, method, targets) in enumerate(TABLE1_GROUPS):
        results = [runs[key]["result"] for seed in LONG_SEEDS
                   if (key := run_key(long_spec(planned.pick, method, targets, seed, planned.long_steps))) in runs]
        if not results:
            continue
        steps = [p["step"] for p in results[0]["curve"]]
        by_step = [[100 * r["curve"][i]["val_accuracy"] for r in results] for i in range(len(steps))]
        seeds = f"{len(results)} seed{'s' if len(results) > 1 else ''}"
        line, = accuracy_ax.plot(steps, [statistics.mean(v) for v in by_step], label=f"{label} ({seeds})",
                                 linestyle=styles[index % len(styles)])
        if len(results) > 1:
            accuracy_ax.fill_between(steps, [min(v) for v in by_step], [max(v) for v in by_step],
                                     color=line.get_color(), alpha=0.2)
        loss_steps = [p["step"] for p in results[0]["loss_history"]]
        loss = [statistics.mean(r["loss_history"][i]["loss"] for r in results) for i in range(len(loss_steps))]
        loss_ax.plot(loss_steps, loss, color=line.get_color(), linestyle=line.get_linestyle(), linewidth=0.8,
                     label=label)
    figure.suptitle(f"Long runs on easy-vqa ({planned.long_steps} optimizer steps, batch {BATCH_SIZE}): each method "
                    "at its validated hyperparameters, lines the mean over seeds")
    accuracy_ax.set_title(f"Validation accuracy ({VAL_QUESTIONS} questions, every {CURVE_EVERY} steps)")
    accuracy_ax.set_xlabel("optimizer step")
    accuracy_ax.set_ylabel("exact-match accuracy (%)")
    handles, _ = accuracy_ax.get_legend_handles_labels()
    band = Patch(facecolor="gray", alpha=0.2, label="shaded: lowest to highest seed")
    accuracy_ax.legend(handles=handles + [band], fontsize=8, loc="lower right")
    loss_ax.set_title(f"Training loss (mean of {LOGGING_STEPS} steps, mean over seeds)")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("cross-entropy on answer tokens")
    loss_ax.set_yscale("log")
    figure.savefig(CURVES_PNG, dpi=120, format="png")
    return CURVES_PNG


def write_report(all_runs: list[dict]) -> str:
    runs = finished(all_runs)
    planned = plan(all_runs, compute_analysis=False)
    specs, pick, analysis, levels, threshold = (planned.specs, planned.pick, planned.analysis, planned.levels,
                                                planned.threshold)
    lines = [
        "# Results on the embedded default (small-scale analogue of the paper's Tables 1 and 2)",
        "",
        "Written by `python -m examples.run_results` from `examples/results/runs.jsonl`; every number below comes "
        "from a run recorded there (its exact command is `examples.run_results.command(spec)`). Do not edit by hand.",
        "",
        "- Model: the embedded default VLM (SmolLM2-135M-Instruct + ImageNet EfficientNet-Lite0, LLaVA projector "
        "aligned in stage 1), `LlavaForConditionalGeneration`, fp32 weights, CPU.",
        f"- Data: easy-vqa. Training: train split minus 200 held-back images, 4 questions per record. Hyperparameter "
        f"sweeps: {VAL_QUESTIONS} questions of the held-back images (validation). Reported accuracy: the first "
        f"{TEST_QUESTIONS} questions of the shuffled test split, exact match after greedy decoding.",
        f"- Every run: batch {BATCH_SIZE} (4 questions per record), cosine schedule with 3% warm-up, bf16 autocast "
        f"training and fp32 evaluation ({emulated_kernels_note(runs)}), same data order per seed (so runs with the "
        "same seed are paired); vision tower "
        f"frozen. Seeds {', '.join(map(str, SEEDS))}{more_seeds_note(planned)}; mean ± std over seeds. Long runs: "
        f"{planned.long_steps or '(pending)'} optimizer steps, validation accuracy every {CURVE_EVERY} steps; "
        f"short runs: {STEPS} steps. The untuned model "
        "answers in sentences, so its exact match is near 0 (`python -m examples.compare` prints it as 'no "
        "fine-tuning').",
        "- Noise: one run's test accuracy has a binomial s.e. of "
        f"{HalfUp(100 * binomial_se(0.9, TEST_QUESTIONS)):.1f} points at 90% and "
        f"{HalfUp(100 * binomial_se(0.7, TEST_QUESTIONS)):.1f} at 70% ({TEST_QUESTIONS} questions); a validation "
        f"point {HalfUp(100 * binomial_se(0.9, VAL_QUESTIONS)):.1f} at 90% ({VAL_QUESTIONS} questions). Differences "
        "between methods are tested per seed (paired t, 95%); one seed gives no test.",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); runs ran one at a "
        "time, niced, with light other work beside them, so times are indicative. Peak memory is the process's "
        "resident-set high-water mark during training (it includes allocator caches and the runtime; "
        "benchmarks/README.md explains why it cannot rank methods closer than a few hundred MiB); tensor memory, "
        "recorded by runs since 2026-12-02, is the peak of live tensor bytes in the second training step "
        f"(`harness.tensor_memory`, what a GPU's max_memory_allocated counts); {answer_logits_note(runs)}.",
        f"- Model builds (stage 1 on CPU is not bit-reproducible, see README): {model_builds_line(runs)} "
        f"Interruptions: {resumed_runs_note(runs)}.",
        progress_line(specs, all_runs, pick),
    ]
    lines += long_sections(planned, runs, all_runs)
    lines += [
        "",
        f"## Short runs ({STEPS} steps): Table 1 analogue (test accuracy, %)",
        "",
        "Too short for the masks to move (see the mask table below); kept as the record of the sweeps that picked "
        "the hyperparameters.",
        "",
        "| method | hyperparameters (picked on validation) | test acc | merged acc | final train loss | trainable | "
        "saved | median step (s) | peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if pick:
        for label, method, targets in TABLE1_GROUPS:
            results = _seed_results(runs, _group(pick, method, targets))
            lines.append(_row(label, _hyperparameters(pick, method), results))
        lines += paired_differences(runs, pick)
    else:
        lines.append("| (pending: sweeps not finished) | | | | | | | | |")

    lines += ["", f"## Short runs ({STEPS} steps): Table 2 analogue, S-MFT vs H-MFT (test accuracy, %)", ""]
    if levels:
        lines.append(f"H-MFT sparsity levels = s x (0.5, 1, 2), s = share of the S-MFT-Both (seed 0) masks below "
                     f"{threshold:g} (masks normalised so that 1 = the initial mask): the first of the thresholds "
                     f"{', '.join(f'{t:g}' for t in MASK_THRESHOLDS)} (the paper's near-zero first) with at least "
                     f"{100 * MIN_LEVEL_SHARE:g}% of the masks below it, the paper's smallest H-MFT level."
                     + ("" if threshold == MASK_THRESHOLDS[0] else
                        f" In this {STEPS}-step run no mask came near 0 (see the mask table below), so the levels "
                        "come from the masks S-MFT weakened most, not from masks it switched off."))
        lines += ["", "These H-MFT runs started their scores at raw |W| (mean 0.15 in SmolLM2), the rule of the code "
                  "when they ran: at lr 0.1 one Adam step flipped the sign of about half of them, and the score "
                  "gradient then lacked sign(S), so every flipped score was pushed the wrong way and H-MFT barely "
                  "learned. The library now starts hard scores at |W| / mean |W| per matrix, trains them at lr 0.01 "
                  "and multiplies their gradient by sign(S) (docs/method.md); the long-run H-MFT rows above use that "
                  "rule."]
        lines += ["", "| variant | hyperparameters | test acc | merged acc | final train loss | trainable | saved | "
                  "median step (s) | peak RSS (GiB) |", "|---|---|---|---|---|---|---|---|---|"]
        both = _seed_results(runs, _group(pick, "mft", "both"))
        lines.append(_row("S-MFT Both", _hyperparameters(pick, "mft"), both))
        _, main = hard_specs(levels, runs)
        for sp in hard_levels(levels):
            group = [s for s in main if s["sparsity"] == sp]
            hp = f"lr {group[0]['lr']:g}" if group else "pending lr check"
            reference = " (reference: the paper's TinyLlama best)" if sp not in levels else ""
            lines.append(_row(f"H-MFT {100 * sp:.3g}%{reference}", hp, _seed_results(runs, group)))
    elif analysis:
        lines.append(f"Not run: fewer than {100 * MIN_LEVEL_SHARE:g}% of the S-MFT-Both (seed 0) masks fall below any "
                     f"threshold up to {MASK_THRESHOLDS[-1]:g}, so the masks suggest no sparsity level.")
    else:
        lines.append("pending: needs the S-MFT-Both seed-0 test run, whose masks set the sparsity levels.")

    lines += ["", f"## Short-run sweeps ({STEPS} steps; validation accuracy, %, seed 0)", "",
              "S-MFT (Both): learning rate x (init, T).", "",
              "| init, T (M0) | " + " | ".join(f"lr {lr:g}" for lr in MFT_LRS) + " |",
              "|---|" + "---|" * len(MFT_LRS)]
    planned = {run_key(s) for s in sweep_specs()}
    for (i, t) in MFT_INIT_T:
        m0 = 1 / (1 + math.exp(-i / t))
        cells = []
        for lr in MFT_LRS:
            s = spec("A", "val", "mft", lr, init_score=i, temperature=t)
            a = accuracy(runs, s)
            cells.append("" if run_key(s) not in planned else "…" if a is None else f"{HalfUp(100 * a):.1f}")
        lines.append(f"| {i:g}, {t:g} ({HalfUp(m0):.4f}) | " + " | ".join(cells) + " |")
    lines += ["", "(A cross, not a grid: learning rates at the paper's default (init 7, T 2.3), the paper's other "
              "presets at lr 0.1; … = planned, not finished yet.)"]
    for method, lrs, label in (("lora", LORA_LRS, "LoRA (r 16, alpha 32)"), ("full", FULL_LRS, "Full FT")):
        cells = [accuracy(runs, spec("A", "val", method, lr)) for lr in lrs]
        lines += ["", f"{label}:", "", "| " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|" + "---|" * len(lrs),
                  "| " + " | ".join("…" if c is None else f"{HalfUp(100 * c):.1f}" for c in cells) + " |"]
    if levels:
        lr_sweep, _ = hard_specs(levels, runs)
        cells = [accuracy(runs, s) for s in lr_sweep]
        lines += ["", f"H-MFT at sparsity {100 * lr_sweep[0]['sparsity']:.3g}%:", "",
                  "| " + " | ".join(f"lr {s['lr']:g}" for s in lr_sweep) + " |", "|" + "---|" * len(lr_sweep),
                  "| " + " | ".join("…" if c is None else f"{HalfUp(100 * c):.1f}" for c in cells) + " |"]

    if analysis:
        lines += mask_table(analysis, f"## Learned S-MFT masks after {STEPS} steps (Both, seed 0, test run)")

    failed = {k: v for k, v in last_failures(all_runs).items() if k not in runs}
    if failed:
        lines += ["", "## Failed runs", ""]
        for r in failed.values():
            lines.append(f"- `{slug(r['spec'])}`: exit {r['returncode']}: "
                         f"`{r['log_tail'].strip().splitlines()[-1][:200] if r['log_tail'].strip() else ''}`")
    if retired(all_runs):
        lines += ["", "## Re-runs", "",
                  "Runs retired and run again: finished ones, or ones the runner had given up on after failures "
                  "(their records stay in runs.jsonl):", ""]
        old = {(r["key"], r["finished_at"]): r["result"] for r in all_runs if r.get("kind") == "run" and "result" in r}
        for r in retired(all_runs):
            result = old.get((r["key"], r["retired_finished_at"]), {})
            figures = ", ".join(f"{label} {HalfUp(100 * result[k]):.2f}%" for k, label in
                                (("accuracy", "test acc"), ("merged_accuracy", "merged")) if result.get(k) is not None)
            ended = "finished" if r.get("retired_status", "ok") == "ok" else "last failed"
            lines.append(f"- `{r['slug']}` ({ended} {r['retired_finished_at']}{'; ' + figures if figures else ''}), "
                         f"retired {r['at']}: {r['reason']}")
    lines += ["", "Commands: `nice -n 10 python -m examples.run_results` (runs what is missing, resumable); "
              "`python -m examples.run_results --report-only` (this file from runs.jsonl).", ""]
    text = "\n".join(lines)
    REPORT_FILE.write_text(text)
    return text

