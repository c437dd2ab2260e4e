# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The plan behind examples/RESULTS.md: which runs exist, their keys, and the records file they are appended to.

Every run is `python -m examples.llava.train_methods ... --bf16` in its own process on the embedded default VLM (its
exact command: `examples.run_results.command(spec)`), with the same batch size, data order and precision (bf16
autocast training, fp32 evaluation). A finished run is appended at once to examples/results/runs.jsonl and skipped on
restart. The phases, each planned once the ones it depends on are done:

A. sweeps on a validation split (held-back train images), seed 0, 32 steps: S-MFT learning rate at the paper's
   default (init 7, T 2.3) and (init, T) = the paper's other presets at lr 0.1, LoRA and full fine-tuning lr;
B. 32-step runs on the test split, 3 seeds, with the hyperparameters A picked: S-MFT attn / mlp / both, S-MFT STE,
   LoRA, QLoRA (LoRA's learning rate), full fine-tuning;
C. 32-step H-MFT: sparsity levels from the B S-MFT-both masks, a learning-rate check, 3 seeds per level;
L. long runs with a validation curve (`CURVE_EVERY`): a pilot sets their length (`long_steps`); 3 seeds of S-MFT
   Both, LoRA and full, then an (init, T) x lr grid on validation (`GRID_STEPS`), seed 0 of the other Table 1 rows,
   H-MFT at the levels read off the long S-MFT masks (lr checks on validation first), the layer-range
   ablation (first / middle / last third of the decoder layers), and 2 more seeds of the headline rows whose
   comparison is within the noise at 3 (`more_seed_specs`).

A finished run found wrong later (a bug fixed since) is re-run with `--rerun SLUG --reason TEXT`: that appends a
record saying why, the old run stops counting (it stays in the file) and the next run repeats it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.evaluation import correctness_text
from harness.statistics import binomial_se, paired_comparison


ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "examples" / "results"
RUNS_FILE = RESULTS_DIR / "runs.jsonl"
REPORT_FILE = ROOT / "examples" / "RESULTS.md"
# What `make demo` (examples.compare) trains each method with: `validated_hyperparameters`, written by the runner.
HYPERPARAMETERS_FILE = RESULTS_DIR / "hyperparameters.json"
OUTPUTS = ROOT / "outputs" / "results"

# The tasks runs train on: easy-vqa (every run before phase E) and the handwritten digits (`harness.digits`).
DEFAULT_TASK = "easy-vqa"
TASKS = ("easy-vqa", "digits")
STEPS = 32
BATCH_SIZE = 8
SEEDS = (0, 1, 2)
LOGGING_STEPS = 4  # the logged training loss is the mean over this many steps
MAX_ATTEMPTS = 2  # a run that failed this often is skipped: a second failure is no passing fluke
VAL_QUESTIONS = 200
TEST_QUESTIONS = 400
MFT_LRS = (0.01, 0.03, 0.1, 0.3)
MFT_INIT_T = ((7.0, 2.3), (3.0, 0.5), (5.0, 1.3))  # paper presets: Qwen2.5-0.5B, TinyLlama-1.1B, Gemma-2B
LORA_LRS = (5e-5, 2e-4, 1e-3, 3e-3)
FULL_LRS = (1e-5, 3e-5, 1e-4)
HARD_LRS = (1e-3, 0.01, 0.1)  # around DEFAULT_HARD_SCORE_LR; the long runs' scores start at |W| / mean |W|
# Masks (normalised: 1 at initialisation) count as "switched off" below a threshold: the paper's near-zero (0.1)
# first, then looser ones for a short run that moved few masks that far. The first threshold with at least
# MIN_LEVEL_SHARE of the masks below it sets the H-MFT levels; both are reported.
MASK_THRESHOLDS = (0.1, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
MIN_LEVEL_SHARE = 1e-4  # the paper's smallest H-MFT sparsity (0.01%, Qwen2.5-0.5B)
# Also run at the paper's best H-MFT level for TinyLlama-1.1B (1.0%; the examples' default --sparsity): a reference
# far above the levels a short S-MFT run suggests.
REFERENCE_SPARSITY = 0.01
PAPER_DEFAULT = {"lr": 0.1, "init_score": 7.0, "temperature": 2.3}
# Long runs (phase L): validation accuracy every CURVE_EVERY steps, test accuracy at the best validation point and
# at the end. A pilot S-MFT-Both run of PILOT_STEPS sets their length: the shortest of LONG_STEP_CHOICES by which the
# pilot's validation accuracy came within one binomial s.e. of its best (the best method has plateaued there).
CURVE_EVERY = 40
PILOT_STEPS = 640
LONG_STEP_CHOICES = (320, 480, 640)
LONG_EXTRA_SEED_GROUPS = (("mft", "both"), ("lora", "both"), ("full", "both"))  # 3 seeds; the rest seed 0 first
HEADLINE_REFERENCE = ("mft", "both")  # the headline rows are compared with this one
# A headline comparison still within the noise at SEEDS gets these seeds as well (for both of its rows): with 3 seeds
# the t interval is wide (t = 4.30), and a tie is worth stating more tightly than that.
MORE_SEEDS = (3, 4)
LONG_SEEDS = SEEDS + MORE_SEEDS  # every seed a long Table 1 row can have
# Phase L beyond the headline runs. The grid is shorter than the long runs (it picks defaults, on validation). H-MFT
# checks its learning rate on validation at the grid's length, then at the long runs' own length, which picks it:
# the cosine schedule keeps a rate high for longer in a longer run, and lr 0.1, best at 160 steps, collapsed over 640
# (RESULTS.md). H-MFT scores start at |W| / mean |W| per matrix (unit mean), so these learning rates are fractions of
# a typical score per Adam step.
GRID_STEPS = 160
GRID_LRS = (0.03, 0.1, 0.3)
HARD_LONG_LRS = (1e-3, 1e-2, 1e-1)  # the check at GRID_STEPS
HARD_FULL_LENGTH_LRS = (1e-2, 3e-2)  # the check at the long runs' length; the first is the default (ties)
HARD_SHORT_LRS = (1e-2, 3e-2, 1e-1, 3e-1)  # the check at STEPS, make demo's scale; the first is the default (ties)
LAYER_THIRDS = ("first", "middle", "last")


# ---------------------------------------------------------------------------------------------------------------
# Run bookkeeping
# ---------------------------------------------------------------------------------------------------------------


def run_key(spec: dict) -> str:
    return json.dumps({k: spec[k] for k in sorted(spec) if k != "phase"}, sort_keys=True)


def in_words(spec: dict) -> str:
    """A run as a reader names it: 'S-MFT Both, seed 1, 640 steps on easy-vqa (test split)'."""
    label = next((label for label, method, targets in TABLE1_GROUPS
                  if (method, targets) == (spec["method"], spec.get("targets", "both"))), spec["method"])
    return f"{label}, seed {spec['seed']}, {spec['steps']} steps on {task_of(spec)} ({spec['split']} split)"


def task_of(spec: dict) -> str:
    """The VQA task a run trains and is evaluated on (`TASKS`)."""
    return spec.get("task", DEFAULT_TASK)


def slug(spec: dict) -> str:
    parts = [spec["split"], spec["method"], spec.get("targets", "both"), f"lr{spec['lr']:g}", f"s{spec['seed']}"]
    if spec["steps"] != STEPS:
        parts.append(f"n{spec['steps']}")
    if spec["method"] in ("mft", "mft-ste"):
        parts.insert(3, f"i{spec['init_score']:g}-t{spec['temperature']:g}")
    if spec["method"] == "mft-hard":
        parts.insert(3, f"sp{spec['sparsity']:.6g}")
    if "layers" in spec:
        parts.append(f"layers-{spec['layers']}")
    if "score_scale" in spec:
        parts.append(f"scale{spec['score_scale']:g}-{spec['optimizer']}")
    if task_of(spec) != DEFAULT_TASK:
        parts.insert(0, task_of(spec))
    return "_".join(parts)


def load_runs() -> list[dict]:
    if not RUNS_FILE.is_file():
        return []
    return [json.loads(line) for line in RUNS_FILE.read_text().splitlines() if line.strip()]


def append_record(record: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUNS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def finished(runs: list[dict]) -> dict[str, dict]:
    """Key -> the latest successful run of that key not re-run since (see `rerun_record`)."""
    out: dict[str, dict] = {}
    for r in runs:
        if r.get("kind") == "run" and r.get("status") == "ok":
            out[r["key"]] = r
        elif r.get("kind") == "rerun":
            out.pop(r["key"], None)
    return out


def failures(runs: list[dict]) -> dict[str, int]:
    """Key -> failed attempts since its last re-run record."""
    out: dict[str, int] = {}
    for r in runs:
        if r.get("kind") == "run" and r.get("status") == "failed":
            out[r["key"]] = out.get(r["key"], 0) + 1
        elif r.get("kind") == "rerun":
            out.pop(r["key"], None)
    return out


def given_up(runs: list[dict]) -> set[str]:
    """Keys of runs that failed `MAX_ATTEMPTS` times since their last re-run record: the runner skips them (their
    logs stay under outputs/results/) until a re-run record clears them."""
    return {key for key, count in failures(runs).items() if count >= MAX_ATTEMPTS}


def last_failures(runs: list[dict]) -> dict[str, dict]:
    """Key -> the latest failed run record of that key (its exit code and log tail)."""
    return {r["key"]: r for r in runs if r.get("kind") == "run" and r.get("status") == "failed"}


def pending(specs: list[dict], runs: list[dict]) -> list[dict]:
    """The `specs` the runner still takes, in its order: neither finished nor given up (`given_up`)."""
    done, skipped = finished(runs), given_up(runs)
    return [s for s in specs if run_key(s) not in done and run_key(s) not in skipped]


def rerun_record(run: dict, reason: str) -> dict:
    """A record that retires `run` (kept in the file, no longer counted) so it is run again: a finished run, or the
    last failure of one the runner gave up on (`given_up`), whose failure count it clears."""
    if not reason.strip():
        raise ValueError(f"re-running {slug(run['spec'])} needs a reason (--reason)")
    return {"kind": "rerun", "key": run["key"], "slug": slug(run["spec"]), "reason": reason,
            "retired_status": run["status"], "retired_finished_at": run["finished_at"],
            "at": time.strftime("%Y-%m-%d %H:%M:%S")}


def retired(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("kind") == "rerun"]


# Each test question's correctness ("1" / "0" per question, in evaluation order) at the end of a run and at its best
# validation checkpoint, for McNemar's test between two runs of one seed. Kept in the records because outputs/ is not
# committed and does not survive a change of machine.
ANSWER_FILES = {"end": "predictions.json", "best": "predictions-best.json"}


def answers_in_result(result: dict) -> dict[str, str] | None:
    """Moves the answers `train_and_evaluate` wrote into a run's result (at the end, and in ``best_checkpoint``) into
    the one form the records keep: {"end", "best"}."""
    answers = {"end": result.get("answers_correct"),
               "best": (result.get("best_checkpoint") or {}).pop("answers_correct", None)}
    return {point: text for point, text in answers.items() if text} or None


def answers_from_outputs(s: dict, result: dict) -> dict[str, str] | None:
    """Run `s`'s answers read from its outputs folder, for runs recorded before results held them; None when a file
    is missing or does not give the recorded accuracy (the folder then holds another run's files)."""
    recorded = {"end": result.get("accuracy"), "best": (result.get("best_checkpoint") or {}).get("accuracy")}
    answers = {}
    for point, name in ANSWER_FILES.items():
        if recorded[point] is None:
            continue
        path = OUTPUTS / slug(s) / name
        if not path.is_file():
            return None
        text = correctness_text(json.loads(path.read_text()))
        if not text or abs(text.count("1") / len(text) - recorded[point]) > 1e-9:
            return None
        answers[point] = text
    return answers or None


def answers_record(run: dict, answers: dict[str, str]) -> dict:
    """A record adding the answers of an already finished `run` (one recorded before answers were kept)."""
    return {"kind": "answers", "key": run["key"], "run_finished_at": run["finished_at"], **answers}


def recorded_answers(all_runs: list[dict], run: dict) -> dict[str, str] | None:
    """The answers of the finished `run`: in its result, or in an answers record written for it."""
    if run["result"].get("answers_correct"):
        return run["result"]["answers_correct"]
    matching = [r for r in all_runs if r.get("kind") == "answers" and r["key"] == run["key"]
                and r["run_finished_at"] == run.get("finished_at")]
    return {k: matching[-1][k] for k in ANSWER_FILES if k in matching[-1]} if matching else None


def spec(phase, split, method, lr, seed=0, targets="both", init_score=None, temperature=None, sparsity=None,
         steps=STEPS, curve_every=None, task=DEFAULT_TASK):
    s = {"phase": phase, "split": split, "method": method, "lr": lr, "seed": seed, "targets": targets,
         "steps": steps, "batch_size": BATCH_SIZE}
    if task != DEFAULT_TASK:  # easy-vqa runs, recorded before tasks existed, keep their keys
        s["task"] = task
    if curve_every:
        s["curve_every"] = curve_every
    if method in ("mft", "mft-ste"):
        s.update(init_score=init_score, temperature=temperature)
    if method == "mft-hard":
        s.update(sparsity=sparsity)
    return s



# ---------------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------------


def sweep_specs() -> list[dict]:
    default_i, default_t = MFT_INIT_T[0]
    mft = [spec("A", "val", "mft", lr, init_score=default_i, temperature=default_t) for lr in MFT_LRS]
    mft += [spec("A", "val", "mft", 0.1, init_score=i, temperature=t) for (i, t) in MFT_INIT_T[1:]]
    mft.sort(key=lambda s: (s["lr"] != 0.1, s["init_score"] != 7.0))  # the paper's setting first
    lora = [spec("A", "val", "lora", lr) for lr in LORA_LRS]
    full = [spec("A", "val", "full", lr) for lr in FULL_LRS]
    return mft[:1] + lora[1:2] + full[1:2] + mft[1:] + lora[:1] + lora[2:] + full[:1] + full[2:]


def accuracy(runs: dict[str, dict], s: dict) -> float | None:
    r = runs.get(run_key(s))
    return r["result"]["accuracy"] if r else None


def accuracy_at(result: dict, point: str) -> float:
    """A long run's test accuracy at `point`: "best" (the best validation checkpoint) or "end"."""
    return (result["best_checkpoint"] if point == "best" else result)["accuracy"]


def best(runs: dict[str, dict], candidates: list[dict], default: dict) -> dict:
    """The candidate with the best validation accuracy (ties and missing runs: ``default``)."""
    scored = [(accuracy(runs, c), c) for c in candidates]
    scored = [(a, c) for a, c in scored if a is not None]
    if not scored:
        return default
    top = max(a for a, _ in scored)
    winners = [c for a, c in scored if a == top]
    return default if default in winners else winners[0]


def chosen(runs: dict[str, dict]) -> dict:
    sweeps = sweep_specs()
    mft = [s for s in sweeps if s["method"] == "mft"]
    mft_default = next(s for s in mft if s["lr"] == 0.1 and s["init_score"] == 7.0)
    lora = [s for s in sweeps if s["method"] == "lora"]
    full = [s for s in sweeps if s["method"] == "full"]
    return {
        "mft": best(runs, mft, mft_default),
        "lora": best(runs, lora, next(s for s in lora if s["lr"] == 2e-4)),
        "full": best(runs, full, next(s for s in full if s["lr"] == 3e-5)),
    }


def sweeps_done(runs: dict[str, dict], all_runs: list[dict]) -> bool:
    skipped = given_up(all_runs)
    return all(run_key(s) in runs or run_key(s) in skipped for s in sweep_specs())


def main_specs(pick: dict) -> list[dict]:
    m, lo, fu = pick["mft"], pick["lora"], pick["full"]
    out = []
    for seed in SEEDS:
        for targets in ("both", "attn", "mlp"):
            out.append(spec("B", "test", "mft", m["lr"], seed, targets, m["init_score"], m["temperature"]))
        out.append(spec("B", "test", "mft-ste", m["lr"], seed, "both", m["init_score"], m["temperature"]))
        out.append(spec("B", "test", "lora", lo["lr"], seed))
        out.append(spec("B", "test", "qlora", lo["lr"], seed))
        out.append(spec("B", "test", "full", fu["lr"], seed))
    return out


def stored_mask_analysis(all_runs: list[dict], key: str) -> dict | None:
    """The latest stored analysis of run `key` at the current `MASK_THRESHOLDS`."""
    matching = [r for r in all_runs if r.get("kind") == "mask_analysis" and r["source_key"] == key
                and [level["threshold"] for level in r["levels"]] == list(MASK_THRESHOLDS)]
    return matching[-1] if matching else None


def mask_analysis(pick: dict, runs: dict[str, dict], all_runs: list[dict], compute: bool = True) -> dict | None:
    """Mask statistics of the S-MFT-both seed-0 test run (computed once from its adapter, then stored)."""
    m = pick["mft"]
    source = spec("B", "test", "mft", m["lr"], 0, "both", m["init_score"], m["temperature"])
    key = run_key(source)
    stored = stored_mask_analysis(all_runs, key)
    if stored or not compute or key not in runs:
        return stored
    return analyse_adapter(key, Path(runs[key]["result"]["saved_to"]), all_runs)


def mask_plot_path(key: str) -> Path:
    """The committed Fig. 6-style PNG of run `key`'s masks (see `analyse_adapter`)."""
    return RESULTS_DIR / f"masks_{slug(json.loads(key))}.png"


def analyse_adapter(key: str, adapter: Path, all_runs: list[dict]) -> dict:
    """Mask statistics of the adapter run `key` saved, at every `MASK_THRESHOLDS`, appended to the runs file (the
    adapters live under outputs/, which is not committed). Also writes `mask_plot_path(key)`: near-zero share per
    projection type (the paper's Fig. 6), histogram and layer heat map at the first threshold with at least
    `MIN_LEVEL_SHARE` of the masks below it (the one that sets the H-MFT levels)."""
    from peft_mft.tools.analysis import analyze_masks
    from peft_mft.tools.plots import save_mask_plots

    record = {"kind": "mask_analysis", "source_key": key, "adapter": str(adapter.relative_to(ROOT)), "levels": []}
    plotted = False
    for threshold in MASK_THRESHOLDS:
        analysis = analyze_masks(adapter, near_zero_threshold=threshold)
        if not plotted and (analysis.overall.near_zero_share >= MIN_LEVEL_SHARE or threshold == MASK_THRESHOLDS[-1]):
            save_mask_plots(analysis, mask_plot_path(key), title=f"Masks learned by {in_words(json.loads(key))}")
            record["plot"] = {"path": str(mask_plot_path(key).relative_to(ROOT)), "threshold": threshold}
            plotted = True
        record["levels"].append({
            "threshold": threshold,
            "share": analysis.overall.near_zero_share,
            "by_projection": {k: v.near_zero_share for k, v in analysis.by_projection().items()},
            "suggested_sparsity": analysis.suggested_sparsity(),
        })
        if threshold == MASK_THRESHOLDS[0]:
            record["histogram"] = {"edges": analysis.histogram_edges, "counts": analysis.histogram_counts}
            record["overall"] = analysis.overall.to_dict()
    append_record(record)
    all_runs.append(record)
    return record


def hard_sparsities(analysis: dict | None) -> tuple[list[float], float | None]:
    """The first threshold with at least `MIN_LEVEL_SHARE` of the masks below it gives the share s; levels
    s * (0.5, 1, 2) (`MaskAnalysis.suggested_sparsity`). ([], None) when no threshold has that many."""
    if analysis is None:
        return [], None
    for level in analysis["levels"]:
        if level["share"] >= MIN_LEVEL_SHARE:
            return [round(x, 6) for x in level["suggested_sparsity"]], level["threshold"]
    return [], None


def hard_specs(levels: list[float], runs: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """The H-MFT learning-rate check at the middle level, and the test runs at its pick ([] until it is done)."""
    if not levels:
        return [], []
    middle = levels[len(levels) // 2]
    lr_sweep = [spec("C", "val", "mft-hard", lr, sparsity=middle) for lr in HARD_LRS]
    if not all(run_key(s) in runs for s in lr_sweep):
        return lr_sweep, []
    lr = best(runs, lr_sweep, lr_sweep[-1])["lr"]
    main = [spec("C", "test", "mft-hard", lr, seed, sparsity=sp) for seed in SEEDS for sp in hard_levels(levels)]
    return lr_sweep, main


def hard_levels(levels: list[float]) -> list[float]:
    """The levels from the masks, then `REFERENCE_SPARSITY` (once)."""
    return levels + [REFERENCE_SPARSITY] if levels and REFERENCE_SPARSITY not in levels else levels


def long_spec(pick: dict, method: str, targets: str, seed: int, steps: int) -> dict:
    """A phase-L run: test split, validation curve, the hyperparameters phase A picked."""
    m = pick["mft"] if method in ("mft", "mft-ste") else pick["lora" if method in ("lora", "qlora") else "full"]
    init = dict(init_score=m["init_score"], temperature=m["temperature"]) if method in ("mft", "mft-ste") else {}
    return spec("L", "test", method, m["lr"], seed, targets, steps=steps, curve_every=CURVE_EVERY, **init)


def pilot_spec(pick: dict) -> dict:
    return long_spec(pick, "mft", "both", 0, PILOT_STEPS)


def long_steps(pilot: dict | None) -> int | None:
    """The long runs' length from the pilot's validation curve (see LONG_STEP_CHOICES); None until it is done."""
    if pilot is None:
        return None
    curve = pilot["result"]["curve"]
    top = max(point["val_accuracy"] for point in curve)
    within = top - binomial_se(top, VAL_QUESTIONS)
    for steps in LONG_STEP_CHOICES:
        if max((p["val_accuracy"] for p in curve if p["step"] <= steps), default=0.0) >= within:
            return steps
    return LONG_STEP_CHOICES[-1]


def headline_specs(pick: dict, steps: int) -> list[dict]:
    """Every seed of the headline rows (LONG_EXTRA_SEED_GROUPS), seed by seed."""
    return [long_spec(pick, method, targets, seed, steps)
            for seed in SEEDS for method, targets in LONG_EXTRA_SEED_GROUPS]


def more_seed_specs(pick: dict, steps: int, runs: dict[str, dict]) -> list[dict]:
    """`MORE_SEEDS` of each headline row whose paired comparison with `HEADLINE_REFERENCE` over `SEEDS` is within the
    noise (95% t interval including 0, at the best validation checkpoint or at the end), and of the reference with
    them; [] until every headline run of `SEEDS` is done, or when every comparison is clear."""
    if not all(run_key(s) in runs for s in headline_specs(pick, steps)):
        return []

    def accuracies(group: tuple[str, str], point: str) -> list[float]:
        return [accuracy_at(runs[run_key(long_spec(pick, *group, seed, steps))]["result"], point)
                for seed in SEEDS]

    within_noise = [group for group in LONG_EXTRA_SEED_GROUPS if group != HEADLINE_REFERENCE and any(
        not paired_comparison(accuracies(group, point), accuracies(HEADLINE_REFERENCE, point)).clear
        for point in ("best", "end"))]
    groups = [HEADLINE_REFERENCE] + within_noise if within_noise else []
    return [long_spec(pick, method, targets, seed, steps) for seed in MORE_SEEDS for method, targets in groups]


def side_specs(pick: dict, steps: int) -> list[dict]:
    """Seed 0 of the other Table 1 rows."""
    return [long_spec(pick, method, targets, 0, steps) for _, method, targets in TABLE1_GROUPS
            if (method, targets) not in LONG_EXTRA_SEED_GROUPS]


def grid_specs() -> list[dict]:
    """The (init, T) x lr grid of S-MFT Both on validation, seed 0, `GRID_STEPS` steps, validation curve."""
    return [spec("L", "val", "mft", lr, 0, "both", i, t, steps=GRID_STEPS, curve_every=CURVE_EVERY)
            for (i, t) in MFT_INIT_T for lr in GRID_LRS]


def long_mask_analyses(pick: dict, steps: int, all_runs: list[dict]) -> dict[int, dict]:
    """Seed -> the stored mask analysis of each long S-MFT Both run that has one (stored as each run ends), in seed
    order, `MORE_SEEDS` included: the lowest seed's sets the H-MFT levels, the others show whether the pattern
    repeats."""
    stored = {seed: stored_mask_analysis(all_runs, run_key(long_spec(pick, "mft", "both", seed, steps)))
              for seed in LONG_SEEDS}
    return {seed: analysis for seed, analysis in stored.items() if analysis}


def hard_long_specs(steps: int, levels: list[float], picked: dict | None) -> tuple[list[dict], list[dict]]:
    """H-MFT at the levels read off the long S-MFT masks: the lr checks (`hard_lr_checks`), then seed 0 of every
    level, then seeds 1 and 2 at the lr of ``picked`` (`hard_lr_pick` at `steps`; [] while it is None)."""
    if not levels:
        return [], []
    check = hard_lr_checks(steps, levels)
    if picked is None:
        return check, []
    return check, [spec("L", "test", "mft-hard", picked["lr"], seed, sparsity=level, steps=steps,
                        curve_every=CURVE_EVERY) for seed in SEEDS for level in levels]


def hard_lr_checks(steps: int, levels: list[float]) -> list[dict]:
    """The H-MFT lr checks on validation at the middle of `levels`: at `GRID_STEPS` and at the long runs' `steps`
    (validation curve; the latter picks their lr), then at the short runs' `STEPS`, make demo's length (the end
    only; it picks their lr, since the long runs' need not suit a run a twentieth as long). [] without levels."""
    if not levels:
        return []
    middle = levels[len(levels) // 2]
    lengths = ((GRID_STEPS, HARD_LONG_LRS, CURVE_EVERY), (steps, HARD_FULL_LENGTH_LRS, CURVE_EVERY),
               (STEPS, HARD_SHORT_LRS, None))
    return [spec("L", "val", "mft-hard", lr, 0, sparsity=middle, steps=length, curve_every=every)
            for length, lrs, every in lengths for lr in lrs]


def hard_lr_pick(steps: int, levels: list[float], runs: dict[str, dict], length: int) -> dict | None:
    """{"lr", "sparsity"} of H-MFT for runs of `length` steps (the long runs' `steps`, or `STEPS`), picked on
    validation: the middle level (the one read off the masks, 1x) at the lr the check at that length chose; None
    until that check is done."""
    deciding = [s for s in hard_lr_checks(steps, levels) if s["steps"] == length]
    if not deciding or not all(run_key(s) in runs for s in deciding):
        return None
    return {"lr": best(runs, deciding, deciding[0])["lr"], "sparsity": deciding[0]["sparsity"]}


def layer_specs(pick: dict, steps: int) -> list[dict]:
    """The layer-range ablation: S-MFT Both on one third of the decoder layers (plus the projector), seed 0."""
    return [{**long_spec(pick, "mft", "both", 0, steps), "layers": third} for third in LAYER_THIRDS]


def layer_range(third: str, num_layers: int) -> str:
    """The decoder layers of `third` ("first" / "middle" / "last") as "a-b" (`--layers`); the middle third
    takes the remainder when `num_layers` is not a multiple of 3."""
    size = num_layers // 3
    start = {"first": 0, "middle": size, "last": num_layers - size}[third]
    end = {"first": size, "middle": num_layers - size, "last": num_layers}[third]
    return f"{start}-{end - 1}"


@dataclass
class Plan:
    """Every run known so far, in the order they run, and what the later phases were derived from."""

    specs: list[dict]
    pick: dict | None = None
    analysis: dict | None = None  # masks of the 32-step S-MFT Both run (phase C levels)
    levels: list[float] = field(default_factory=list)
    threshold: float | None = None
    long_steps: int | None = None
    long_analyses: dict[int, dict] = field(default_factory=dict)  # seed -> masks of each long S-MFT Both run
    long_levels: list[float] = field(default_factory=list)
    long_threshold: float | None = None
    # H-MFT's {"lr", "sparsity"} for the long runs, picked on validation (`hard_lr_pick`)
    hard_pick: dict | None = None
    hard_short_pick: dict | None = None  # the same for short runs such as make demo's

    @property
    def long_analysis(self) -> dict | None:
        """The lowest seed's long S-MFT Both masks: they set the phase L H-MFT levels and the Fig. 6 view."""
        return next(iter(self.long_analyses.values()), None)


def plan(all_runs: list[dict], compute_analysis: bool = True) -> Plan:
    """Every run known so far (later phases appear once the earlier ones they depend on are done)."""
    runs = finished(all_runs)
    out = Plan(sweep_specs())
    if not sweeps_done(runs, all_runs):
        return out
    out.pick = pick = chosen(runs)
    out.specs += main_specs(pick)
    out.analysis = mask_analysis(pick, runs, all_runs, compute=compute_analysis)
    out.levels, out.threshold = hard_sparsities(out.analysis)
    lr_sweep, main = hard_specs(out.levels, runs)
    out.specs += lr_sweep + main
    pilot = pilot_spec(pick)
    out.specs.append(pilot)
    out.long_steps = steps = long_steps(runs.get(run_key(pilot)))
    if not steps:
        return out
    out.long_analyses = long_mask_analyses(pick, steps, all_runs)
    out.long_levels, out.long_threshold = hard_sparsities(out.long_analysis)
    out.hard_pick = hard_lr_pick(steps, out.long_levels, runs, steps)
    out.hard_short_pick = hard_lr_pick(steps, out.long_levels, runs, STEPS)
    check, hard = hard_long_specs(steps, out.long_levels, out.hard_pick)
    later = [s for s in headline_specs(pick, steps) if s != pilot] + grid_specs() + side_specs(pick, steps) + check
    out.specs += (later + hard[:len(out.long_levels)] + layer_specs(pick, steps) + hard[len(out.long_levels):]
                  + more_seed_specs(pick, steps, runs) + dropin_specs(pick, steps) + evidence_specs(pick, steps, runs))
    return out


# Phase D (drop-in): S-MFT Both with MFTConfig's default score_scale, at the long runs' length, seeds `SEEDS`, trained
# through the AdamW `transformers.Trainer` builds itself at the learning rates pipelines use, each paired by seed with
# the recipe (create_mft_optimizer, a score step of 0.1) on the same build. (label, optimizer, lr); the recipe's lr is
# the pick's score step.
DROPIN_SCORE_SCALE = 4096.0
DROPIN_RECIPE = "recipe (create_mft_optimizer)"
DROPIN_VARIANTS = ((DROPIN_RECIPE, "mft", None), ("Trainer's default rate (5e-5)", "trainer", 5e-5),
                   ("LoRA's habitual rate (2e-4)", "trainer", 2e-4), ("TRL's default rate (2e-5)", "trainer", 2e-5))


def dropin_spec(pick: dict, optimizer: str, lr: float | None, seed: int, steps: int) -> dict:
    """A phase-D run: a long S-MFT Both run with `score_scale` recorded and the optimizer it trains through."""
    s = long_spec(pick, "mft", "both", seed, steps)
    s.update(phase="D", score_scale=DROPIN_SCORE_SCALE, optimizer=optimizer)
    if lr is not None:
        s["lr"] = lr
    return s


def dropin_specs(pick: dict, steps: int) -> list[dict]:
    """Every phase-D run, seed by seed (each seed's pairs complete before the next seed starts)."""
    return [dropin_spec(pick, optimizer, lr, seed, steps) for seed in SEEDS for _, optimizer, lr in DROPIN_VARIANTS]


# Phase E (evidence II): per task, S-MFT Both, LoRA and full fine-tuning tuned at the reported length with the same
# budget (`EVIDENCE_LRS`: three rates each, on validation, seed 0), then run at the rate each picked on the test
# split with seeds `SEEDS`. S-MFT trains through the AdamW `transformers.Trainer` builds at MFTConfig's default
# score_scale (the drop-in path), so its rates are the ones full fine-tuning is tuned over.
EVIDENCE_TASKS = ("digits", "easy-vqa")
EVIDENCE_LRS = {"mft": (1e-5, 3e-5, 1e-4), "lora": (3e-4, 1e-3, 3e-3), "full": (1e-5, 3e-5, 1e-4)}


def evidence_spec(pick: dict, method: str, lr: float, split: str, seed: int, steps: int, task: str) -> dict:
    """A phase-E run: a long run with a validation curve on `task`."""
    s = spec("E", split, method, lr, seed, "both", steps=steps, curve_every=CURVE_EVERY, task=task,
             **({"init_score": pick["mft"]["init_score"], "temperature": pick["mft"]["temperature"]}
                if method == "mft" else {}))
    if method == "mft":
        s.update(score_scale=DROPIN_SCORE_SCALE, optimizer="trainer")
    return s


def evidence_tuning_specs(pick: dict, steps: int, task: str) -> list[dict]:
    """The rates of `EVIDENCE_LRS` on validation, seed 0, rate by rate (every method's first rate first)."""
    return [evidence_spec(pick, method, lrs[i], "val", 0, steps, task)
            for i in range(3) for method, lrs in EVIDENCE_LRS.items()]


def evidence_pick(runs: dict[str, dict], pick: dict, steps: int, task: str) -> dict[str, float] | None:
    """{method: rate} once every tuning run of `task` is finished: the rate whose run reached the highest validation
    accuracy at any curve point (ties: the lower rate)."""
    picked = {}
    for method, lrs in EVIDENCE_LRS.items():
        best = []
        for lr in lrs:
            run = runs.get(run_key(evidence_spec(pick, method, lr, "val", 0, steps, task)))
            if run is None:
                return None
            best.append((max(point["val_accuracy"] for point in run["result"]["curve"]), -lr))
        picked[method] = -max(best)[1]
    return picked


def evidence_specs(pick: dict, steps: int, runs: dict[str, dict]) -> list[dict]:
    """Every phase-E run known so far: each task's tuning runs, then (once they are done) its test runs."""
    out = []
    for task in EVIDENCE_TASKS:
        out += evidence_tuning_specs(pick, steps, task)
        picked = evidence_pick(runs, pick, steps, task)
        if picked:
            out += [evidence_spec(pick, method, picked[method], "test", seed, steps, task)
                    for seed in SEEDS for method in EVIDENCE_LRS]
    return out


TABLE1_GROUPS = (("S-MFT Attn", "mft", "attn"), ("S-MFT MLP", "mft", "mlp"), ("S-MFT Both", "mft", "both"),
                 ("S-MFT STE (Both)", "mft-ste", "both"), ("LoRA (r 16)", "lora", "both"),
                 ("QLoRA (NF4, r 16)", "qlora", "both"), ("Full FT", "full", "both"))


def validated_hyperparameters(all_runs: list[dict] | None = None) -> dict:
    """Per method, the hyperparameters picked on validation at the short runs' length (`STEPS`, make demo's too)
    from the records: {"mft": {"lr", "init_score", "temperature"}, "lora": {"lr"}, "full": {"lr"}} (phase A),
    plus "mft-hard": {"lr", "sparsity"} once phase L's H-MFT check at `STEPS` has picked them (`hard_lr_pick`). The one
    source `examples.compare` (make demo) and the runs above share."""
    all_runs = load_runs() if all_runs is None else all_runs
    pick = chosen(finished(all_runs))
    out = {"mft": {k: pick["mft"][k] for k in ("lr", "init_score", "temperature")},
           "lora": {"lr": pick["lora"]["lr"]}, "full": {"lr": pick["full"]["lr"]}}
    hard = plan(all_runs, compute_analysis=False).hard_short_pick
    return {**out, "mft-hard": hard} if hard else out


def write_hyperparameters(all_runs: list[dict]) -> dict:
    """Write `validated_hyperparameters(all_runs)` to `HYPERPARAMETERS_FILE` (atomically) and return the record."""
    from peft_mft.atomic import atomic_file

    record = {
        "about": "Per method, the hyperparameters picked on validation at the short runs' length for "
                 "examples/RESULTS.md (MFT's lr is its score step). Written by `python -m examples.run_results` "
                 "from examples/results/runs.jsonl; `python -m examples.compare` (make demo) trains with them.",
        "steps": STEPS,
        "methods": validated_hyperparameters(all_runs),
    }
    with atomic_file(HYPERPARAMETERS_FILE) as staging:
        staging.write_text(json.dumps(record, indent=1) + "\n")
    return record
