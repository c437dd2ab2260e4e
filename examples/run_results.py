"""Run the experiments behind examples/RESULTS.md (resumable) and write it.

    nice -n 10 python -m examples.run_results          # run what is missing, rewriting RESULTS.md after each run
    python -m examples.run_results --report-only       # rewrite RESULTS.md from the finished runs
    python -m examples.run_results --dry-run           # list every run and whether it is done

Every run is `python -m examples.llava.train ... --bf16` in its own process on the embedded default VLM, with the
same number of optimizer steps, batch size, data order and precision (bf16 autocast training, fp32 evaluation). A
finished run is appended at once to examples/results/runs.jsonl and skipped on restart. The plan, in phases that depend on earlier ones:

A. sweeps on a validation split (held-back train images), seed 0: S-MFT learning rate at the paper's default
   (init 7, T 2.3) and (init, T) = the paper's other presets at lr 0.1, LoRA learning rate, full fine-tuning
   learning rate;
B. main runs on the test split, 3 seeds, with the hyperparameters A picked: S-MFT attn / mlp / both, S-MFT STE,
   LoRA, QLoRA (LoRA's learning rate), full fine-tuning;
C. H-MFT: sparsity levels from the learned S-MFT-both masks (share of masks below a threshold, see
   `peft_mft.tools.analysis`), a learning-rate check on the validation split, then 3 seeds per level on the test split.

A finished run found wrong later (a bug fixed since) is re-run with `--rerun SLUG --reason TEXT`: that appends a
record saying why, the old run stops counting (it stays in the file) and the next run repeats it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "examples" / "results"
RUNS_FILE = RESULTS_DIR / "runs.jsonl"
REPORT_FILE = ROOT / "examples" / "RESULTS.md"
OUTPUTS = ROOT / "outputs" / "results"

STEPS = 32
BATCH_SIZE = 8
SEEDS = (0, 1, 2)
LOGGING_STEPS = 4  # the logged training loss is the mean over this many steps
VAL_QUESTIONS = 200
TEST_QUESTIONS = 400
MFT_LRS = (0.01, 0.03, 0.1, 0.3)
MFT_INIT_T = ((7.0, 2.3), (3.0, 0.5), (5.0, 1.3))  # paper presets: Qwen2.5-0.5B, TinyLlama-1.1B, Gemma-2B
LORA_LRS = (5e-5, 2e-4, 1e-3, 3e-3)
FULL_LRS = (1e-5, 3e-5, 1e-4)
HARD_LRS = (1e-3, 0.01, 0.1)  # H-MFT scores start at |W| (mean 0.15 in SmolLM2), far below S-MFT's 3-7
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


# ---------------------------------------------------------------------------------------------------------------
# Run bookkeeping
# ---------------------------------------------------------------------------------------------------------------


def run_key(spec: dict) -> str:
    return json.dumps({k: spec[k] for k in sorted(spec) if k != "phase"}, sort_keys=True)


def slug(spec: dict) -> str:
    parts = [spec["split"], spec["method"], spec.get("targets", "both"), f"lr{spec['lr']:g}", f"s{spec['seed']}"]
    if spec["steps"] != STEPS:
        parts.append(f"n{spec['steps']}")
    if spec["method"] in ("mft", "mft-ste"):
        parts.insert(3, f"i{spec['init_score']:g}-t{spec['temperature']:g}")
    if spec["method"] == "mft-hard":
        parts.insert(3, f"sp{spec['sparsity']:.6g}")
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


def rerun_record(run: dict, reason: str) -> dict:
    """A record that retires the finished `run` (kept in the file, no longer counted) so it is run again."""
    if not reason.strip():
        raise ValueError(f"re-running {slug(run['spec'])} needs a reason (--reason)")
    return {"kind": "rerun", "key": run["key"], "slug": slug(run["spec"]), "reason": reason,
            "retired_finished_at": run["finished_at"], "at": time.strftime("%Y-%m-%d %H:%M:%S")}


def retired(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("kind") == "rerun"]


def spec(phase, split, method, lr, seed=0, targets="both", init_score=None, temperature=None, sparsity=None,
         steps=STEPS, curve_every=None):
    s = {"phase": phase, "split": split, "method": method, "lr": lr, "seed": seed, "targets": targets,
         "steps": steps, "batch_size": BATCH_SIZE}
    if curve_every:
        s["curve_every"] = curve_every
    if method in ("mft", "mft-ste"):
        s.update(init_score=init_score, temperature=temperature)
    if method == "mft-hard":
        s.update(sparsity=sparsity)
    return s


def command(s: dict, metrics: Path) -> list[str]:
    from harness.easyvqa import prepare_easy_vqa

    data = prepare_easy_vqa()
    eval_file = data["val"] if s["split"] == "val" else data["test"]
    cmd = [sys.executable, "-m", "examples.llava.train", "--method", s["method"], "--lr", str(s["lr"]),
           "--seed", str(s["seed"]), "--targets", s["targets"], "--max-steps", str(s["steps"]),
           "--batch-size", str(s["batch_size"]), "--eval-data", str(eval_file),
           "--eval-image-folder", str(data["image_folder"]),
           "--eval-samples", str(VAL_QUESTIONS if s["split"] == "val" else TEST_QUESTIONS),
           "--eval-batch-size", "32", "--logging-steps", str(LOGGING_STEPS), "--bf16",
           "--output-dir", str(OUTPUTS / slug(s)),
           "--metrics-json", str(metrics)]
    if s["method"] in ("mft", "mft-ste"):
        cmd += ["--init-score", str(s["init_score"]), "--temperature", str(s["temperature"])]
    if s["method"] == "mft-hard":
        cmd += ["--sparsity", repr(s["sparsity"])]
    if s.get("curve_every"):
        # Merging was checked on every method at 32 steps (Table 1); a long run spends its time on the curve.
        cmd += ["--curve-data", str(data["val"]), "--curve-image-folder", str(data["image_folder"]),
                "--curve-samples", str(VAL_QUESTIONS), "--curve-every", str(s["curve_every"])]
    if s["split"] == "val" or s.get("curve_every"):
        cmd += ["--no-merge-check"]
    return cmd


def execute(s: dict, runs: list[dict]) -> dict | None:
    key = run_key(s)
    if key in finished(runs):
        return finished(runs)[key]
    if failures(runs).get(key, 0) >= 2:
        return None
    out = OUTPUTS / slug(s)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics-run.json"
    metrics.unlink(missing_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] run {slug(s)}", flush=True)
    start = time.time()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run(command(s, metrics), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    record = {"kind": "run", "key": key, "spec": s, "seconds": round(time.time() - start, 1),
              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if proc.returncode == 0 and metrics.is_file():
        result = json.loads(metrics.read_text())
        record.update(status="ok", result=result)
    else:
        tail = (out / "log.txt").read_text()[-1500:]
        record.update(status="failed", returncode=proc.returncode, log_tail=tail)
        print(f"  failed ({proc.returncode}); log: {out / 'log.txt'}", flush=True)
    append_record(record)
    runs.append(record)
    if record["status"] == "ok" and s["phase"] == "L" and s["method"] in ("mft", "mft-ste"):
        analyse_adapter(key, Path(record["result"]["saved_to"]), runs)
    return record if record["status"] == "ok" else None


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
    fails = failures(all_runs)
    return all(run_key(s) in runs or fails.get(run_key(s), 0) >= 2 for s in sweep_specs())


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


def analyse_adapter(key: str, adapter: Path, all_runs: list[dict]) -> dict:
    """Mask statistics of the adapter run `key` saved, at every `MASK_THRESHOLDS`, appended to the runs file
    (the adapters live under outputs/, which is not committed)."""
    from peft_mft.tools.analysis import analyze_masks

    record = {"kind": "mask_analysis", "source_key": key, "adapter": str(adapter.relative_to(ROOT)), "levels": []}
    for threshold in MASK_THRESHOLDS:
        analysis = analyze_masks(adapter, near_zero_threshold=threshold)
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


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on `n` independent questions."""
    return math.sqrt(accuracy * (1 - accuracy) / n)


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


def long_specs(pick: dict, steps: int) -> list[dict]:
    """Every seed of the headline rows (LONG_EXTRA_SEED_GROUPS), seed by seed, then seed 0 of the other Table 1
    rows: the headline comparison needs its seeds before the side rows."""
    out = [long_spec(pick, method, targets, seed, steps) for seed in SEEDS
           for method, targets in LONG_EXTRA_SEED_GROUPS]
    return out + [long_spec(pick, method, targets, 0, steps) for _, method, targets in TABLE1_GROUPS
                  if (method, targets) not in LONG_EXTRA_SEED_GROUPS]


def plan(all_runs: list[dict], compute_analysis: bool = True):
    """Every run known so far (later phases appear once the earlier ones they depend on are done)."""
    runs = finished(all_runs)
    specs = sweep_specs()
    pick, analysis, levels, threshold = None, None, [], None
    if sweeps_done(runs, all_runs):
        pick = chosen(runs)
        specs += main_specs(pick)
        analysis = mask_analysis(pick, runs, all_runs, compute=compute_analysis)
        levels, threshold = hard_sparsities(analysis)
        lr_sweep, main = hard_specs(levels, runs)
        specs += lr_sweep + main
        pilot = pilot_spec(pick)
        steps = long_steps(runs.get(run_key(pilot)))
        specs += [pilot] + ([s for s in long_specs(pick, steps) if s != pilot] if steps else [])
    return specs, pick, analysis, levels, threshold


# ---------------------------------------------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> str:
    if not values:
        return "pending"
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else float("nan")
    n = f" (n={len(values)})" if len(values) != len(SEEDS) else ""
    return f"{mean:.1f} ± {std:.1f}{n}" if not math.isnan(std) else f"{mean:.1f}{n}"


def _fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M"


def _fmt_mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _seed_results(runs: dict[str, dict], specs: list[dict]) -> list[dict]:
    return [runs[run_key(s)]["result"] for s in specs if run_key(s) in runs]


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
    return (f"| {label} | {hp} | {acc} | {merged_text} | {loss:.2f} | {_fmt_params(r0['trainable_parameters'])} | "
            f"{_fmt_mib(r0['saved_bytes'])} | {step:.2f} | {peak:.2f} |")


TABLE1_GROUPS = (("S-MFT Attn", "mft", "attn"), ("S-MFT MLP", "mft", "mlp"), ("S-MFT Both", "mft", "both"),
                 ("S-MFT STE (Both)", "mft-ste", "both"), ("LoRA (r 16)", "lora", "both"),
                 ("QLoRA (NF4, r 16)", "qlora", "both"), ("Full FT", "full", "both"))


def _group(pick: dict, method: str, targets: str) -> list[dict]:
    """The main runs (every seed) of one Table 1 row."""
    return [s for s in main_specs(pick) if s["method"] == method and s["targets"] == targets]


def _hyperparameters(pick: dict, method: str) -> str:
    if method in ("mft", "mft-ste"):
        m = pick["mft"]
        return f"lr {m['lr']:g}, init {m['init_score']:g}, T {m['temperature']:g}"
    return f"lr {pick['lora' if method in ('lora', 'qlora') else 'full']['lr']:g}"


def paired_differences(runs: dict[str, dict], pick: dict) -> list[str]:
    """Markdown: each method's per-seed test accuracy minus the best method's (seeds share the data order, so the
    differences are paired), once every method has all seeds; a gap counts as clear when |mean| > 2 std / sqrt(n)."""
    by_seed = {}
    for label, method, targets in TABLE1_GROUPS:
        group = _group(pick, method, targets)
        if not all(run_key(s) in runs for s in group):
            return []
        by_seed[label] = {s["seed"]: runs[run_key(s)]["result"]["accuracy"] for s in group}
    best = max(by_seed, key=lambda label: statistics.mean(by_seed[label].values()))
    lines = ["", f"Paired by seed (same data order): test accuracy minus {best}'s, in points; 'clear' when "
             f"|mean| > 2 std / sqrt({len(SEEDS)}).", "", "| method | " + " | ".join(f"seed {s}" for s in SEEDS)
             + " | mean ± std | clear |", "|---|" + "---|" * (len(SEEDS) + 2)]
    for label, accuracies in by_seed.items():
        if label == best:
            continue
        diffs = [100 * (accuracies[s] - by_seed[best][s]) for s in SEEDS]
        mean, std = statistics.mean(diffs), statistics.stdev(diffs)
        clear = "yes" if abs(mean) > 2 * std / math.sqrt(len(diffs)) else "no"
        cells = " | ".join(f"{d:+.1f}" for d in diffs)
        lines.append(f"| {label} | {cells} | {mean:+.1f} ± {std:.1f} | {clear} |")
    return lines


def write_report(all_runs: list[dict]) -> str:
    runs = finished(all_runs)
    specs, pick, analysis, levels, threshold = plan(all_runs, compute_analysis=False)
    done = sum(run_key(s) in runs for s in specs)
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
        f"- Every run: {STEPS} optimizer steps, batch {BATCH_SIZE} (4 questions per record), cosine schedule with 3% "
        f"warm-up, bf16 autocast training and fp32 evaluation, same data order per seed; vision tower frozen. Seeds "
        f"{', '.join(map(str, SEEDS))}; mean ± std over seeds. Final train loss: the mean training loss of the last "
        f"{LOGGING_STEPS} steps (answer tokens), mean over seeds. The untuned model answers in sentences, so its exact "
        "match is near 0 (`python -m examples.compare` prints it as 'no fine-tuning').",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared with other "
        "jobs, so step times are indicative only. Peak memory is the process's peak resident set size during training.",
        f"- Progress: {done} of {len(specs)} planned runs finished"
        + ("" if pick else " (the main runs are planned once the sweeps are done)") + ".",
        "",
        "## Table 1 analogue: methods (test accuracy, %)",
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

    lines += ["", "## Table 2 analogue: S-MFT vs H-MFT (test accuracy, %)", ""]
    if levels:
        lines.append(f"H-MFT sparsity levels = s x (0.5, 1, 2), s = share of the S-MFT-Both (seed 0) masks below "
                     f"{threshold:g} (masks normalised so that 1 = the initial mask): the first of the thresholds "
                     f"{', '.join(f'{t:g}' for t in MASK_THRESHOLDS)} (the paper's near-zero first) with at least "
                     f"{100 * MIN_LEVEL_SHARE:g}% of the masks below it, the paper's smallest H-MFT level."
                     + ("" if threshold == MASK_THRESHOLDS[0] else
                        f" In this {STEPS}-step run no mask came near 0 (see the mask table below), so the levels "
                        "come from the masks S-MFT weakened most, not from masks it switched off."))
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

    lines += ["", "## Sweeps (validation accuracy, %, seed 0)", "", "S-MFT (Both): learning rate x (init, T).", "",
              "| init, T (M0) | " + " | ".join(f"lr {lr:g}" for lr in MFT_LRS) + " |",
              "|---|" + "---|" * len(MFT_LRS)]
    planned = {run_key(s) for s in sweep_specs()}
    for (i, t) in MFT_INIT_T:
        m0 = 1 / (1 + math.exp(-i / t))
        cells = []
        for lr in MFT_LRS:
            s = spec("A", "val", "mft", lr, init_score=i, temperature=t)
            a = accuracy(runs, s)
            cells.append("" if run_key(s) not in planned else "…" if a is None else f"{100 * a:.1f}")
        lines.append(f"| {i:g}, {t:g} ({m0:.4f}) | " + " | ".join(cells) + " |")
    lines += ["", "(A cross, not a grid: learning rates at the paper's default (init 7, T 2.3), the paper's other "
              "presets at lr 0.1; … = planned, not finished yet.)"]
    for method, lrs, label in (("lora", LORA_LRS, "LoRA (r 16, alpha 32)"), ("full", FULL_LRS, "Full FT")):
        cells = [accuracy(runs, spec("A", "val", method, lr)) for lr in lrs]
        lines += ["", f"{label}:", "", "| " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
                  "|" + "---|" * len(lrs), "| " + " | ".join("…" if c is None else f"{100 * c:.1f}" for c in cells) + " |"]
    if levels:
        lr_sweep, _ = hard_specs(levels, runs)
        cells = [accuracy(runs, s) for s in lr_sweep]
        lines += ["", f"H-MFT at sparsity {100 * lr_sweep[0]['sparsity']:.3g}%:", "",
                  "| " + " | ".join(f"lr {s['lr']:g}" for s in lr_sweep) + " |", "|" + "---|" * len(lr_sweep),
                  "| " + " | ".join("…" if c is None else f"{100 * c:.1f}" for c in cells) + " |"]

    if analysis:
        lines += ["", "## Learned S-MFT masks (Both, seed 0, test run)", "",
                  "Share of mask values below each threshold, overall and per projection type "
                  "(`peft_mft.tools.analysis.analyze_masks`).", ""]
        projections = list(analysis["levels"][0]["by_projection"])
        lines += ["| threshold | overall | " + " | ".join(projections) + " |", "|---|---|" + "---|" * len(projections)]
        for level in analysis["levels"]:
            lines.append(f"| M < {level['threshold']:g} | {100 * level['share']:.4f}% | "
                         + " | ".join(f"{100 * level['by_projection'][p]:.4f}%" for p in projections) + " |")
        overall = analysis.get("overall", {})
        if overall:
            lines += ["", "Mask values overall: " + ", ".join(
                f"{k} {v:.4g}" for k, v in overall.items() if isinstance(v, float)) + "."]

    failed = {r["key"]: r for r in all_runs if r.get("kind") == "run" and r.get("status") == "failed"}
    failed = {k: v for k, v in failed.items() if k not in runs}
    if failed:
        lines += ["", "## Failed runs", ""]
        for r in failed.values():
            lines.append(f"- `{slug(r['spec'])}`: exit {r['returncode']}: "
                         f"`{r['log_tail'].strip().splitlines()[-1][:200] if r['log_tail'].strip() else ''}`")
    if retired(all_runs):
        lines += ["", "## Re-runs", "", "Finished runs retired and run again (their records stay in runs.jsonl):", ""]
        old = {(r["key"], r["finished_at"]): r["result"] for r in all_runs if r.get("kind") == "run" and "result" in r}
        for r in retired(all_runs):
            result = old.get((r["key"], r["retired_finished_at"]), {})
            figures = ", ".join(f"{label} {100 * result[k]:.2f}%" for k, label in
                                (("accuracy", "test acc"), ("merged_accuracy", "merged")) if result.get(k) is not None)
            lines.append(f"- `{r['slug']}` (finished {r['retired_finished_at']}{'; ' + figures if figures else ''}), "
                         f"retired {r['at']}: {r['reason']}")
    lines += ["", "Commands: `nice -n 10 python -m examples.run_results` (runs what is missing, resumable); "
              "`python -m examples.run_results --report-only` (this file from runs.jsonl).", ""]
    text = "\n".join(lines)
    REPORT_FILE.write_text(text)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    p.add_argument("--rerun", metavar="SLUG", help="retire this finished run (as --dry-run names it) to run it again")
    p.add_argument("--reason", default="", help="why --rerun (required with it; written to RESULTS.md)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    all_runs = load_runs()
    if args.rerun:
        matches = [r for r in finished(all_runs).values() if slug(r["spec"]) == args.rerun]
        if not matches:
            p.error(f"--rerun {args.rerun!r}: no finished run has this name (see --dry-run)")
        try:
            record = rerun_record(matches[0], args.reason)
        except ValueError as error:
            p.error(str(error))
        append_record(record)
        print(f"retired {args.rerun}; the next run repeats it")
        return
    if args.report_only:
        write_report(all_runs)
        print(f"wrote {REPORT_FILE}")
        return
    if args.dry_run:
        specs, *_ = plan(all_runs, compute_analysis=False)
        done = finished(all_runs)
        for s in specs:
            print(("done    " if run_key(s) in done else "pending ") + slug(s))
        return
    from harness.embedded import embedded_llava_checkpoint

    embedded_llava_checkpoint()  # build the shared model once, before the runs start in parallel-free sequence
    new = 0
    while True:
        specs, *_ = plan(all_runs)
        todo = [s for s in specs if run_key(s) not in finished(all_runs) and failures(all_runs).get(run_key(s), 0) < 2]
        if not todo or (args.max_runs is not None and new >= args.max_runs):
            break
        execute(todo[0], all_runs)
        new += 1
        write_report(all_runs)
    write_report(all_runs)
    print(f"wrote {REPORT_FILE}")


if __name__ == "__main__":
    main()
