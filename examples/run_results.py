# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Run the experiments behind examples/RESULTS.md (resumable) and write it.

    nice -n 10 python -m examples.run_results          # run what is missing, rewriting RESULTS.md after each run
    python -m examples.run_results --report-only       # rewrite RESULTS.md from the finished runs
    python -m examples.run_results --dry-run           # list every run and whether it is done
    python -m examples.run_results --rerun SLUG --reason TEXT   # run a finished or given-up run again

The plan (which runs, in which order, derived from which earlier ones) is `examples.results_plan`; the report and
its figures `examples.results_report`. This module runs one spec at a time, each in its own process, and appends
its record to examples/results/runs.jsonl the moment it ends; a long run checkpoints every `CHECKPOINT_EVERY` steps
and a restarted runner resumes it there (`harness.run_state`). Runs train in bf16 autocast, with emulated kernels on
a CPU without native bf16 (`harness.precision`; each record says which).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .results_plan import (
    DEFAULT_TASK,
    HYPERPARAMETERS_FILE,
    LOGGING_STEPS,
    OUTPUTS,
    REPORT_FILE,
    ROOT,
    TEST_QUESTIONS,
    VAL_QUESTIONS,
    analyse_adapter,
    answers_from_outputs,
    answers_in_result,
    answers_record,
    append_record,
    finished,
    given_up,
    last_failures,
    layer_range,
    load_runs,
    pending,
    plan,
    recorded_answers,
    rerun_record,
    run_key,
    slug,
    task_of,
    write_hyperparameters,
)
from .results_report import write_report


CHECKPOINT_EVERY = 80  # optimizer steps; a multiple of CURVE_EVERY and LOGGING_STEPS (the resumed loss needs it)


def embedded_num_layers() -> int:
    """Decoder layers of the embedded model's language model (from its cached config)."""
    from harness.embedded import embedded_llava_checkpoint

    config = json.loads((Path(embedded_llava_checkpoint()) / "config.json").read_text())
    return config["text_config"]["num_hidden_layers"]


def task_data(task: str) -> dict:
    """The LLaVA JSON files ("train", "val", "test") and "image_folder" of `task`, built on first use."""
    if task == "digits":
        from harness.digits import prepare_digits

        return prepare_digits()
    from harness.easyvqa import prepare_easy_vqa

    return prepare_easy_vqa()


def command(s: dict, metrics: Path) -> list[str]:
    data = task_data(task_of(s))
    eval_file = data["val"] if s["split"] == "val" else data["test"]
    cmd = [sys.executable, "-m", "examples.llava.train_methods", "--method", s["method"], "--lr", str(s["lr"]),
           "--seed", str(s["seed"]), "--targets", s["targets"], "--max-steps", str(s["steps"]),
           "--batch-size", str(s["batch_size"]), "--eval-data", str(eval_file),
           "--eval-image-folder", str(data["image_folder"]),
           "--eval-samples", str(VAL_QUESTIONS if s["split"] == "val" else TEST_QUESTIONS),
           "--eval-batch-size", "32", "--logging-steps", str(LOGGING_STEPS), "--bf16",
           "--output-dir", str(OUTPUTS / slug(s)),
           "--metrics-json", str(metrics)]
    if task_of(s) != DEFAULT_TASK:  # without --data the script trains on easy-vqa
        cmd += ["--data", str(data["train"]), "--image-folder", str(data["image_folder"])]
    if s["method"] in ("mft", "mft-ste"):
        cmd += ["--init-score", str(s["init_score"]), "--temperature", str(s["temperature"])]
    if s["method"] == "mft-hard":
        cmd += ["--sparsity", repr(s["sparsity"])]
    if "layers" in s:
        cmd += ["--layers", layer_range(s["layers"], embedded_num_layers())]
    if "score_scale" in s:  # phase D; earlier runs trained the scores themselves (score_scale 1)
        cmd += ["--score-scale", repr(s["score_scale"]), "--optimizer", s["optimizer"]]
    if s.get("curve_every"):
        # Merging was checked on every method at 32 steps (Table 1); a long run spends its time on the curve.
        cmd += ["--curve-data", str(data["val"]), "--curve-image-folder", str(data["image_folder"]),
                "--curve-samples", str(VAL_QUESTIONS), "--curve-every", str(s["curve_every"])]
        # a long run outlasts a working session: it resumes from its last checkpoint (harness.run_state)
        cmd += ["--save-steps", str(CHECKPOINT_EVERY), "--save-total-limit", "1", "--resume"]
    if s["split"] == "val" or s.get("curve_every"):
        cmd += ["--no-merge-check"]
    return cmd


def model_build() -> dict:
    """Which build of the embedded model the runs use: stage 1 on CPU is not bit-reproducible, so a machine that
    rebuilt the cache trains from slightly different projector weights (README). The weights' SHA-256 (first 12 hex
    digits), stage 1's final loss and the assembly version (2 and later: stage 1 without the validation images'
    captions) go into every run record."""
    import hashlib

    from harness.embedded import ASSEMBLY_VERSION, embedded_llava_checkpoint

    folder = Path(embedded_llava_checkpoint())
    digest = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    stage1 = json.loads((folder / "stage1.json").read_text())
    return {"sha256": digest.hexdigest()[:12], "stage1_train_loss": stage1.get("train_loss"),
            "assembly": ASSEMBLY_VERSION}


def execute(s: dict, runs: list[dict], build: dict | None = None) -> dict | None:
    key = run_key(s)
    if key in finished(runs):
        return finished(runs)[key]
    if key in given_up(runs):
        return None
    out = OUTPUTS / slug(s)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics-run.json"
    metrics.unlink(missing_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] run {slug(s)}", flush=True)
    start = time.time()
    with open(out / "log.txt", "a") as log:  # a resumed run's log follows its earlier parts
        log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] start\n")
        log.flush()
        proc = subprocess.run(command(s, metrics), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    record = {"kind": "run", "key": key, "spec": s, "seconds": round(time.time() - start, 1),
              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "model_build": build}
    if proc.returncode == 0 and metrics.is_file():
        result = json.loads(metrics.read_text())
        result["answers_correct"] = answers_in_result(result)
        record.update(status="ok", result=result)
    else:
        tail = (out / "log.txt").read_text()[-1500:]
        record.update(status="failed", returncode=proc.returncode, log_tail=tail)
        print(f"  failed ({proc.returncode}); log: {out / 'log.txt'}", flush=True)
    append_record(record)
    runs.append(record)
    if record["status"] == "ok":  # recorded: its checkpoints must not resume a later retry of the same spec
        from harness.run_state import remove_resume_files

        remove_resume_files(out / "trainer")
    if record["status"] == "ok" and s.get("curve_every") and s["split"] == "test":
        measure_forgetting(key, out)
    # the Fig. 6 data of every long test run of S-MFT on all layers
    if record["status"] == "ok" and s["phase"] == "L" and s["split"] == "test" and "layers" not in s \
            and s["method"] in ("mft", "mft-ste"):
        analyse_adapter(key, Path(record["result"]["saved_to"]), runs)
    return record if record["status"] == "ok" else None


def measure_forgetting(key: str, out: Path) -> None:
    """Measure a finished run's forgetting (`examples.forgetting`, its own process, recorded in forgetting.jsonl)
    from what it saved in `out`; a failure is logged in `out`/forgetting.log and the runner goes on."""
    with open(out / "forgetting.log", "a") as log:
        argv = [sys.executable, "-m", "examples.forgetting", "--run-dir", str(out), "--source-key", key]
        proc = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        print(f"  forgetting measurement failed ({proc.returncode}); log: {out / 'forgetting.log'}", flush=True)


def store_missing_answers(all_runs: list[dict]) -> int:
    """Append the answers of finished runs recorded before answers were kept, where their outputs folder still
    holds them (`answers_from_outputs`). Returns how many runs got them."""
    stored = 0
    for run in finished(all_runs).values():
        if recorded_answers(all_runs, run) is None and (answers := answers_from_outputs(run["spec"], run["result"])):
            record = answers_record(run, answers)
            append_record(record)
            all_runs.append(record)
            stored += 1
    return stored


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    p.add_argument("--rerun", metavar="SLUG", help="run this finished or given-up run (as --dry-run names it) again")
    p.add_argument("--reason", default="", help="why --rerun (required with it; written to RESULTS.md)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    all_runs = load_runs()
    if args.rerun:
        skipped = given_up(all_runs)
        failed = [r for key, r in last_failures(all_runs).items() if key in skipped]
        matches = [r for r in [*finished(all_runs).values(), *failed] if slug(r["spec"]) == args.rerun]
        if not matches:
            p.error(f"--rerun {args.rerun!r}: no finished or given-up run has this name (see --dry-run)")
        try:
            record = rerun_record(matches[0], args.reason)
        except ValueError as error:
            p.error(str(error))
        append_record(record)
        print(f"retired {args.rerun}; the next run repeats it")
        return
    if args.report_only:
        store_missing_answers(all_runs)
        write_report(all_runs)
        write_hyperparameters(all_runs)
        print(f"wrote {REPORT_FILE} and {HYPERPARAMETERS_FILE}")
        return
    if args.dry_run:
        specs = plan(all_runs, compute_analysis=False).specs
        done, skipped = finished(all_runs), given_up(all_runs)
        for s in specs:
            state = "done" if run_key(s) in done else "given up" if run_key(s) in skipped else "pending"
            print(f"{state:<9}{slug(s)}")
        return
    store_missing_answers(all_runs)
    build = model_build()  # builds the shared model once, before the runs start
    print(f"embedded model build {build}", flush=True)
    new = 0
    while True:
        todo = pending(plan(all_runs).specs, all_runs)
        if not todo or (args.max_runs is not None and new >= args.max_runs):
            break
        execute(todo[0], all_runs, build)
        new += 1
        write_report(all_runs)
        write_hyperparameters(all_runs)
    write_report(all_runs)
    write_hyperparameters(all_runs)
    print(f"wrote {REPORT_FILE} and {HYPERPARAMETERS_FILE}")


if __name__ == "__main__":
    main()
