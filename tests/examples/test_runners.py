# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""compare.py's table and run_results.py's plan, on made-up run records (nothing is trained here)."""

from __future__ import annotations

import json

import pytest

from examples import results_plan as rp
from examples import results_report as report
from examples import run_results as runner
from examples.compare import format_table


def _ok(spec, accuracy):
    result = {"accuracy": accuracy, "merged_accuracy": accuracy, "merged_identical_predictions": True,
              "trainable_parameters": 1000, "saved_bytes": 4096, "median_step_seconds": 1.0,
              "peak_memory_bytes": 2**30, "saved_to": "x", "eval_questions": 400,
              "loss_history": [{"step": 4, "loss": 2.0}, {"step": 8, "loss": accuracy}]}
    return {"kind": "run", "status": "ok", "key": rp.run_key(spec), "spec": spec, "result": result}


def test_table_lists_every_method_and_flags_merge_differences():
    rows = [
        {"method": "mft", "trainable_parameters": 107_237_376, "saved_bytes": 429_000_000, "median_step_seconds": 5.2,
         "peak_memory_bytes": 4 * 2**30, "accuracy": 0.5, "merged_accuracy": 0.5,
         "merged_identical_predictions": True},
        {"method": "qlora", "trainable_parameters": 4_932_608, "saved_bytes": 19_800_000, "median_step_seconds": 3.0,
         "peak_memory_bytes": 3 * 2**30, "accuracy": 0.45, "merged_accuracy": 0.44,
         "merged_identical_predictions": False, "merged_differing_predictions": 3},
        {"method": "full", "trainable_parameters": 134_515_008, "saved_bytes": 560_000_000, "median_step_seconds": 7.0,
         "peak_memory_bytes": 5 * 2**30, "accuracy": 0.55},
        {"method": "lora", "error": "RuntimeError: boom"},
    ]
    table = format_table(rows, {"accuracy": 0.1})
    assert "107.24M" in table and "50.0%" in table and "(3 answers differ)" in table
    assert "- (no adapter)" in table and "failed: RuntimeError: boom" in table and "(no fine-tuning)" in table


def test_main_runs_use_the_best_validation_hyperparameters():
    runs = [_ok(s, 0.5) for s in rp.sweep_specs()]
    best_mft = next(s for s in rp.sweep_specs() if s["method"] == "mft" and s["lr"] == 0.3)
    best_lora = next(s for s in rp.sweep_specs() if s["method"] == "lora" and s["lr"] == 1e-3)
    runs += [_ok(best_mft, 0.9), _ok(best_lora, 0.8)]  # later records of the same key win
    runs = [r for r in runs if not (r["key"] in (rp.run_key(best_mft), rp.run_key(best_lora)) and
                                    r["result"]["accuracy"] == 0.5)]
    planned = rp.plan(runs, compute_analysis=False)
    specs, pick = planned.specs, planned.pick
    assert pick["mft"]["lr"] == 0.3 and pick["lora"]["lr"] == 1e-3 and pick["full"]["lr"] == 3e-5  # tie: default
    main = [s for s in specs if s["phase"] == "B"]
    assert len(main) == 7 * len(rp.SEEDS)
    assert {s["lr"] for s in main if s["method"] in ("lora", "qlora")} == {1e-3}
    assert {(s["targets"]) for s in main if s["method"] == "mft"} == {"attn", "mlp", "both"}


def test_main_runs_wait_for_the_sweeps():
    planned = rp.plan([_ok(rp.sweep_specs()[0], 0.5)], compute_analysis=False)
    specs, pick = planned.specs, planned.pick
    assert pick is None and all(s["phase"] == "A" for s in specs)


def _level(threshold, share):
    return {"threshold": threshold, "share": share, "suggested_sparsity": [share / 2, share, 2 * share]}


@pytest.mark.parametrize(
    "levels, expected",
    [
        ([_level(0.1, 0.0), _level(0.5, 0.002)], ([0.001, 0.002, 0.004], 0.5)),
        ([_level(0.1, 0.0), _level(0.98, 2e-8), _level(0.99, 2e-4)], ([1e-4, 2e-4, 4e-4], 0.99)),  # too few at 0.98
        ([_level(0.1, 0.0), _level(0.99, 5e-5)], ([], None)),
    ],
)
def test_hard_sparsities_come_from_the_first_threshold_with_enough_masks_below_it(levels, expected):
    assert rp.hard_sparsities({"levels": levels}) == expected


def test_mask_analysis_at_other_thresholds_is_not_reused():
    key = "k"
    old = {"kind": "mask_analysis", "source_key": key, "levels": [_level(0.1, 0.0)]}
    assert rp.stored_mask_analysis([old], key) is None
    current = {**old, "levels": [_level(t, 0.0) for t in rp.MASK_THRESHOLDS]}
    assert rp.stored_mask_analysis([old, current], key) is current
    assert rp.stored_mask_analysis([current], "other") is None


def _failed(spec):
    return {"kind": "run", "status": "failed", "key": rp.run_key(spec), "spec": spec, "returncode": 1, "log_tail": "x"}


def test_a_retired_run_is_planned_again_and_its_retry_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "RUNS_FILE", tmp_path / "runs.jsonl")
    monkeypatch.setattr(report, "REPORT_FILE", tmp_path / "RESULTS.md")
    first = rp.sweep_specs()[0]
    done = {**_ok(first, 0.42), "finished_at": "2026-11-25 08:00:00"}
    rp.append_record(done)
    with pytest.raises(SystemExit):
        runner.main(["--rerun", rp.slug(first)])  # no reason
    with pytest.raises(SystemExit):
        runner.main(["--rerun", "no-such-run", "--reason", "bug"])
    assert rp.load_runs() == [done]
    runner.main(["--rerun", rp.slug(first), "--reason", "merge bug fixed"])
    runs = rp.load_runs()
    assert rp.run_key(first) not in rp.finished(runs) and runs[0] == done  # kept in the file, no longer counted
    assert rp.failures(runs + [_failed(first)]) == {rp.run_key(first): 1}
    assert rp.failures([_failed(first)] + runs) == {}  # failures before the re-run record do not count
    redone = {**_ok(first, 0.5), "finished_at": "2026-11-25 09:00:00"}
    assert rp.finished(runs + [redone])[rp.run_key(first)] is redone
    text = report.write_report(runs + [redone])
    assert "50.0" in text and "merge bug fixed" in text and "test acc 42.00%" in text and rp.slug(first) in text


def test_a_long_run_checkpoints_resumes_and_once_recorded_removes_only_its_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "RUNS_FILE", tmp_path / "runs.jsonl")
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    files = {"val": tmp_path / "val.json", "test": tmp_path / "test.json", "image_folder": tmp_path}
    monkeypatch.setattr("harness.easyvqa.prepare_easy_vqa", lambda: files)
    long_run = rp.spec("L", "test", "lora", 1e-3, steps=640, curve_every=rp.CURVE_EVERY)
    trainer = tmp_path / "outputs" / rp.slug(long_run) / "trainer"
    (trainer / "checkpoint-560").mkdir(parents=True)
    (trainer / ".checkpoint-640.saving").mkdir()  # left by a save the kill interrupted
    (trainer / ".curve-best-step-600.safetensors.saving").write_bytes(b"half")  # likewise
    (trainer / "checkpoint-best").mkdir()  # not a name the run writes
    (trainer / "curve-best-step-520.safetensors").write_bytes(b"best")
    (trainer / "notes.txt").write_text("not the run's")
    (trainer.parent / "log.txt").write_text("the run's first part\n")

    forgetting = []

    def finished_run(cmd, **kwargs):
        if "examples.forgetting" in cmd:  # measured once the run is recorded
            forgetting.append(cmd[cmd.index("--run-dir") + 1:])
            return runner.subprocess.CompletedProcess(cmd, 0)
        save_every = int(cmd[cmd.index("--save-steps") + 1])
        assert "--resume" in cmd and save_every % rp.CURVE_EVERY == 0 and save_every % rp.LOGGING_STEPS == 0
        metrics = cmd[cmd.index("--metrics-json") + 1]
        with open(metrics, "w") as f:
            json.dump({**_ok(long_run, 0.8)["result"], "resumed_at_steps": [560]}, f)
        return runner.subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", finished_run)
    record = runner.execute(long_run, [])
    assert record["result"]["resumed_at_steps"] == [560] and rp.load_runs() == [record]
    assert forgetting == [[str(trainer.parent), "--source-key", rp.run_key(long_run)]]
    assert sorted(p.name for p in trainer.iterdir()) == ["checkpoint-best", "notes.txt"]
    assert (trainer.parent / "log.txt").read_text().startswith("the run's first part\n")


def test_report_is_written_from_records(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "REPORT_FILE", tmp_path / "RESULTS.md")
    text = report.write_report([_ok(rp.sweep_specs()[0], 0.42)])
    assert "42.0" in text and "pending" in text and (tmp_path / "RESULTS.md").read_text() == text


def test_progress_names_the_pending_runs_in_the_runners_order_and_not_the_finished_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "REPORT_FILE", tmp_path / "RESULTS.md")
    first, second, third = rp.sweep_specs()[:3]
    lines = report.write_report([_ok(second, 0.42)]).splitlines()
    line = next(text for text in lines if text.startswith("- Progress:"))
    assert line.startswith(f"- Progress: 1 of {len(rp.plan([_ok(second, 0.42)]).specs)} planned runs finished")
    assert f"`{rp.slug(second)}`" not in line
    assert line.index(f"`{rp.slug(first)}`") < line.index(f"`{rp.slug(third)}`")


def test_a_run_that_failed_twice_is_named_as_given_up_and_runs_again_after_rerun(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rp, "RUNS_FILE", tmp_path / "runs.jsonl")
    monkeypatch.setattr(report, "REPORT_FILE", tmp_path / "RESULTS.md")
    first, second, third = rp.sweep_specs()[:3]
    for record in (_failed(first), _failed(first), _failed(second), _ok(third, 0.42)):
        rp.append_record({"finished_at": "2026-12-04 12:00:00", **record})

    def progress():
        text = report.write_report(rp.load_runs())
        return next(line for line in text.splitlines() if line.startswith("- Progress:")), text

    line, _ = progress()
    pending, given_up = line.split("; failed 2 times")
    assert line.startswith("- Progress: 1 of ")  # neither failed run counts as finished
    assert f"`{rp.slug(first)}`" in given_up and f"`{rp.slug(first)}`" not in pending
    assert f"`{rp.slug(second)}`" in pending  # one failure: the runner tries it again
    runner.main(["--dry-run"])
    listed = capsys.readouterr().out.splitlines()
    assert f"given up {rp.slug(first)}" in listed and f"pending  {rp.slug(second)}" in listed
    assert f"done     {rp.slug(third)}" in listed

    with pytest.raises(SystemExit):
        runner.main(["--rerun", rp.slug(second), "--reason", "one failure is retried anyway"])
    runner.main(["--rerun", rp.slug(first), "--reason", "out of memory: fixed"])
    assert rp.given_up(rp.load_runs()) == set()
    line, text = progress()
    assert "failed 2 times" not in line and f"`{rp.slug(first)}`" in line
    assert f"- `{rp.slug(first)}` (last failed 2026-12-04 12:00:00), retired" in text and "fixed" in text


def test_report_counts_answers_the_merged_model_changed():
    results = [{**_ok(rp.sweep_specs()[0], 0.5)["result"], "merged_identical_predictions": same,
                "merged_differing_predictions": n} for same, n in ((False, 3), (True, 0), (False, 1))]
    assert "(3+1 of 400 answers differ, in 2 seed(s))" in report._row("QLoRA", "lr 1", results)


def test_h_mft_rows_follow_the_mask_analysis_and_the_lr_check(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "REPORT_FILE", tmp_path / "RESULTS.md")
    runs = [_ok(s, 0.5) for s in rp.sweep_specs()]
    pick = rp.plan(runs, compute_analysis=False).pick
    source = next(s for s in rp.main_specs(pick) if s["method"] == "mft" and s["targets"] == "both" and s["seed"] == 0)
    runs.append(_ok(source, 0.6))
    shares = {0.98: 2e-4, 0.99: 0.01}
    runs.append({"kind": "mask_analysis", "source_key": rp.run_key(source),
                 "levels": [{**_level(t, shares.get(t, 0.0)), "by_projection": {"q": shares.get(t, 0.0)}}
                            for t in rp.MASK_THRESHOLDS]})
    planned = rp.plan(runs, compute_analysis=False)
    specs, levels, threshold = planned.specs, planned.levels, planned.threshold
    assert levels == [1e-4, 2e-4, 4e-4] and threshold == 0.98
    lr_sweep = [s for s in specs if s["phase"] == "C"]
    assert [s["lr"] for s in lr_sweep] == list(rp.HARD_LRS) and {s["sparsity"] for s in lr_sweep} == {2e-4}
    assert "pending lr check" in report.write_report(runs)
    runs += [_ok(s, 0.7 if s["lr"] == 0.01 else 0.4) for s in lr_sweep]
    specs = rp.plan(runs, compute_analysis=False).specs
    main = [s for s in specs if s["phase"] == "C" and s["split"] == "test"]
    assert len(main) == 4 * len(rp.SEEDS) and {s["lr"] for s in main} == {0.01}
    assert {s["sparsity"] for s in main} == {1e-4, 2e-4, 4e-4, rp.REFERENCE_SPARSITY}
    text = report.write_report(runs)
    assert "pending lr check" not in text and "| H-MFT 0.02% | lr 0.01 | pending" in text and "below 0.98" in text
    assert "| H-MFT 1% (reference: the paper's TinyLlama best) | lr 0.01 | pending" in text


def _long_hard_tests(specs):
    return [s for s in specs if s["phase"] == "L" and s["method"] == "mft-hard" and s["split"] == "test"]


def test_long_h_mft_takes_its_lr_from_the_check_at_the_long_runs_length(tmp_path, monkeypatch):
    runs, pick, steps = _with_pilot(tmp_path, monkeypatch)
    source = rp.long_spec(pick, "mft", "both", 0, steps)
    runs.append(_masks_of(source, 2e-3))
    planned = rp.plan(runs, compute_analysis=False)
    assert planned.long_levels == [1e-3, 2e-3, 4e-3]
    check = [s for s in planned.specs if s["phase"] == "L" and s["method"] == "mft-hard"]
    assert [(s["steps"], s["lr"]) for s in check] == ([(rp.GRID_STEPS, lr) for lr in rp.HARD_LONG_LRS] +
                                                      [(steps, lr) for lr in rp.HARD_FULL_LENGTH_LRS] +
                                                      [(rp.STEPS, lr) for lr in rp.HARD_SHORT_LRS])
    assert all("curve_every" not in s for s in check if s["steps"] == rp.STEPS)
    assert {(s["split"], s["sparsity"]) for s in check} == {("val", 2e-3)}
    # the short check favours lr 0.1, yet no test run is planned before the check at the long runs' length
    runs += [_long_ok(s, 0.8 if s["lr"] == 0.1 else 0.6) for s in check if s["steps"] == rp.GRID_STEPS]
    assert _long_hard_tests(rp.plan(runs, compute_analysis=False).specs) == []
    assert rp.plan(runs, compute_analysis=False).hard_pick is None
    assert "mft-hard" not in rp.validated_hyperparameters(runs)
    runs += [_long_ok(s, 0.7 if s["lr"] == 0.03 else 0.65) for s in check if s["steps"] == steps]
    hard = _long_hard_tests(rp.plan(runs, compute_analysis=False).specs)
    assert len(hard) == 3 * len(rp.SEEDS) and {(s["lr"], s["steps"]) for s in hard} == {(0.03, steps)}
    # make demo's H-MFT: none until the check at the short runs' length is done, then the middle level at its lr
    assert "mft-hard" not in rp.validated_hyperparameters(runs)
    runs += [_ok(s, {0.1: 0.75, 0.3: 0.6}.get(s["lr"], 0.55)) for s in check if s["steps"] == rp.STEPS]
    assert rp.validated_hyperparameters(runs)["mft-hard"] == {"lr": 0.1, "sparsity": 2e-3}
    assert rp.plan(runs, compute_analysis=False).hard_pick == {"lr": 0.03, "sparsity": 2e-3}
    # a test run at the short check's lr is no longer planned: the report keeps it apart, not in the level's row
    runs.append(_long_ok({**hard[0], "lr": 0.1}, 0.3))
    lines = report.hard_long_section(rp.plan(runs, compute_analysis=False), rp.finished(runs), runs)
    assert f"| {rp.GRID_STEPS} | 60.0 / 60.0 | 60.0 / 60.0 |  | 80.0 / 80.0 |  |" in lines
    assert f"| {steps} |  | 65.0 / 65.0 | 70.0 / 70.0 |  |  |" in lines
    assert "| H-MFT 0.1% zeroed | pending | pending |  |" in lines
    assert f"| {rp.STEPS} |  | 55.0 | 55.0 | 75.0 | 60.0 |" in lines
    assert (f"Picked for the {steps}-step runs: lr 0.03, validation 70.0 at the end (65.0 at lr 0.01); one seed, each "
            "point ± 3.2 s.e., so the gap to the runner-up (lr 0.01) is not tested: the choice between them is the "
            "rule's, not a measured advantage.") in lines
    assert (f"Picked for {rp.STEPS}-step runs and make demo: lr 0.1, validation 75.0 at the end (55.0 at lr 0.01, "
            "55.0 at lr 0.03, 60.0 at lr 0.3); one seed, each point ± 3.1 s.e., so the gap to the runner-up (lr 0.3) "
            "is not tested: the choice between them is the rule's, not a measured advantage.") in lines
    assert lines[-1] == ("| H-MFT 0.1% zeroed | 0.1 | 0 | 30.0 / 30.0 | 31.0 (1 seed, ± 2.3 s.e.) | "
                         "30.0 (1 seed, ± 2.3 s.e.) | 0.30 |")
    assert not any(line.startswith("Paired by seed") for line in lines)  # no S-MFT Both run of that length yet
    # with the masks' source run and one H-MFT seed: the paired gap per seed, not tested on one seed
    runs += [_long_ok(source, 0.9), _long_ok(hard[1], 0.7)]
    lines = report.hard_long_section(rp.plan(runs, compute_analysis=False), rp.finished(runs), runs)
    assert "| H-MFT 0.2% zeroed | -20.0 |  | not tested (1 seed) |" in lines
    assert sum(line.startswith("Paired by seed") for line in lines) == 2  # at the best checkpoint and at the end


def test_compare_runs_h_mft_at_its_validated_setting_and_says_when_there_is_none():
    from examples.compare import describe_args, tuned_method_args
    from harness.methods import DEFAULT_LR, MethodArgs

    validated = {"mft": {"lr": 0.1, "init_score": 3.0, "temperature": 0.5}, "lora": {"lr": 1e-3},
                 "full": {"lr": 3e-5}, "mft-hard": {"lr": 0.03, "sparsity": 0.00142}}
    args = tuned_method_args("mft-hard", validated)
    assert (args.learning_rate("mft-hard"), args.sparsity) == (0.03, 0.00142)
    assert describe_args("mft-hard", args, validated) == "lr 0.03, 0.142% zeroed"
    del validated["mft-hard"]
    args = tuned_method_args("mft-hard", validated)
    assert (args.learning_rate("mft-hard"), args.sparsity) == (DEFAULT_LR["mft-hard"], MethodArgs().sparsity)
    assert describe_args("mft-hard", args, validated).endswith("zeroed (defaults, not validated)")


def test_compare_results_file_holds_the_settings_and_every_finished_method(tmp_path):
    import json

    from examples.compare import write_results

    rows = [{"method": "mft", "accuracy": 0.5}, {"method": "lora", "error": "RuntimeError: boom"}]
    write_results(tmp_path, {"accuracy": 0.1, "predictions": [{"id": 1}]}, rows, steps=16, elapsed_seconds=12.5)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["settings"]["steps"] == 16 and record["settings"]["elapsed_seconds"] == 12.5
    assert record["baseline"] == {"accuracy": 0.1} and record["runs"] == rows


def test_paired_differences_wait_for_every_seed_and_compare_with_the_best():
    runs = [_ok(s, 0.5) for s in rp.sweep_specs()]
    pick = rp.plan(runs, compute_analysis=False).pick
    accuracy = {"lora": (0.80, 0.70, 0.75), "full": (0.60, 0.50, 0.55)}  # LoRA best; full 20 points behind each seed
    main = [_ok(s, accuracy.get(s["method"], (0.78, 0.71, 0.70))[s["seed"]]) for s in rp.main_specs(pick)]
    done = rp.finished(runs + main)
    assert report.paired_differences(rp.finished(runs + main[:-1]), pick) == []
    lines = report.paired_differences(done, pick)
    assert "minus LoRA (r 16)'s" in lines[1]
    full = next(line for line in lines if line.startswith("| Full FT"))
    assert "-20.0" in full and "± 0.0 | yes (p 0.000) |" in full
    mft = next(line for line in lines if line.startswith("| S-MFT Both"))
    # differences -2, +1, -5: sd 3, s.e. 3 / sqrt(3), t(2 df) = 4.303: half-width 7.45
    assert "| -2.0 | +1.0 | -5.0 | -2.0 ± 7.5 | no difference detected (p " in mft


def _long_ok(spec, accuracy, best_step=80):
    record = _ok(spec, accuracy)
    steps = range(rp.CURVE_EVERY, spec["steps"] + 1, rp.CURVE_EVERY)
    record["result"].update(
        curve=[{"step": s, "val_accuracy": accuracy if s >= best_step else accuracy / 2, "train_seconds": float(s)}
               for s in steps],
        best_checkpoint={"step": best_step, "val_accuracy": accuracy, "train_seconds": float(best_step),
                         "accuracy": accuracy + 0.01},
        train_seconds=float(spec["steps"]))
    return record


def _with_pilot(tmp_path, monkeypatch) -> tuple[list[dict], dict, int]:
    """Records up to the long runs' pilot, the report written under tmp_path: (runs, pick, long steps)."""
    monkeypatch.setattr(report, "REPORT_FILE", tmp_path / "RESULTS.md")
    monkeypatch.setattr(report, "CURVES_PNG", tmp_path / "curves.png")
    runs = [_ok(s, 0.5) for s in rp.sweep_specs()]
    pick = rp.plan(runs, compute_analysis=False).pick
    runs.append(_long_ok(rp.pilot_spec(pick), 0.9))
    return runs, pick, rp.plan(runs, compute_analysis=False).long_steps


def _masks_of(source: dict, near_zero_share: float) -> dict:
    """A stored analysis of the masks of run `source`: `near_zero_share` of them below 0.1, 1% below every higher
    threshold."""
    return {"kind": "mask_analysis", "source_key": rp.run_key(source),
            "levels": [_level(t, near_zero_share if t == 0.1 else 0.01) for t in rp.MASK_THRESHOLDS]}


def test_long_runs_report_best_and_end_time_to_best_and_draw_the_curves(tmp_path, monkeypatch):
    runs, pick, steps = _with_pilot(tmp_path, monkeypatch)
    # the pilot is within one s.e. of its best from step 80, so the long runs take the shortest choice
    assert steps == rp.LONG_STEP_CHOICES[0]
    headline = rp.headline_specs(pick, steps)
    accuracy = {"mft": (0.80, 0.70, 0.75), "lora": (0.70, 0.60, 0.65)}  # S-MFT 10 points ahead on every seed
    runs += [_long_ok(s, accuracy[s["method"]][s["seed"]]) for s in headline if s["method"] in accuracy]
    text = report.write_report(runs)
    row = next(line for line in text.splitlines() if line.startswith("| S-MFT Both |"))
    assert "| 76.0 ± 5.0 (3 seeds) | 75.0 ± 5.0 (3 seeds) | 80 | 80 |" in row and row.endswith("| 1.00 | - |")
    full = next(line for line in text.splitlines() if line.startswith("| Full FT |"))
    assert full.endswith("| pending | | | | | | |")
    lora = next(line for line in text.splitlines() if line.startswith("| LoRA (r 16) | +") or
                line.startswith("| LoRA (r 16) | -"))
    assert "-10.0 ± 0.0 | yes (p 0.000) |" in lora
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "McNemar" not in text  # no run kept its answers

    # seed 0 with answers: S-MFT right on questions 0-5, LoRA on 4-9: 4 discordant each way
    mft0, lora0 = (next(r for r in runs if r.get("spec") == s) for s in headline[:2])
    mft0["result"]["answers_correct"] = {"best": "1111110000", "end": "1111110000"}
    lora0["result"]["answers_correct"] = {"best": "0000111111", "end": "0000111111"}
    mft0["result"]["tensor_memory"] = {"peak": 3 * 2**29}  # recorded by one seed: the column shows it
    text = report.write_report(runs)
    assert next(line for line in text.splitlines() if line.startswith("| S-MFT Both |")).endswith("| 1.00 | 1.50 |")
    lora = next(line for line in text.splitlines() if line.startswith("| LoRA (r 16) | -"))
    assert lora.endswith("| yes (p 0.000) | s0 4/4, p 1.00 |") and "McNemar per seed" in text
    # the end column gets its own paired table: best checkpoint and end differ by 0.01 for every run here
    end = text.split("test accuracy at the end minus S-MFT Both's")[1]
    assert "| LoRA (r 16) | -10.0 | -10.0 | -10.0 | -10.0 ± 0.0 | yes (p 0.000) | s0 4/4, p 1.00 |" in end
    full = next(line for line in text.splitlines() if line.startswith("| Full FT |"))
    assert full.endswith("| pending | | | | | | |")


def test_headline_comparisons_within_the_noise_get_more_seeds(tmp_path, monkeypatch):
    runs, pick, steps = _with_pilot(tmp_path, monkeypatch)
    headline = rp.headline_specs(pick, steps)
    # LoRA: +1, -2, +1 points against S-MFT Both (within the noise); full: 10 points behind on every seed (clear)
    accuracy = {"mft": (0.80, 0.70, 0.75), "lora": (0.81, 0.68, 0.76), "full": (0.70, 0.60, 0.65)}
    finished_headline = [_long_ok(s, accuracy[s["method"]][s["seed"]]) for s in headline]
    assert rp.more_seed_specs(pick, steps, rp.finished(runs + finished_headline[:-1])) == []  # not every seed yet
    runs += finished_headline
    planned = rp.plan(runs, compute_analysis=False)
    more = [s for s in planned.specs if s["seed"] in rp.MORE_SEEDS]
    assert [(s["method"], s["seed"]) for s in more] == [("mft", 3), ("lora", 3), ("mft", 4), ("lora", 4)]
    # the last Table 1 runs (only phases D and E, other experiments, come after them)
    table1 = [s for s in planned.specs if s["phase"] not in ("D", "E")]
    assert table1[-len(more):] == more and all(s["steps"] == steps and s["split"] == "test" for s in more)
    # every comparison clear: no more seeds
    clear = {"lora": (0.90, 0.81, 0.86), "full": (0.70, 0.60, 0.65)}
    all_clear = [_long_ok(s, clear.get(s["method"], accuracy["mft"])[s["seed"]]) for s in headline]
    assert rp.more_seed_specs(pick, steps, rp.finished(all_clear)) == []
    # seed 3 of both rows done: the long table and the paired tables use it, with t for 4 seeds
    runs += [_long_ok(more[0], 0.78), _long_ok(more[1], 0.74)]
    text = report.write_report(runs)
    row = next(line for line in text.splitlines() if line.startswith("| S-MFT Both |"))
    assert "(4 seeds)" in row
    assert "t = 4.30 for 3 seeds, 3.18 for 4)" in text and "| method | seed 0 | seed 1 | seed 2 | seed 3 |" in text
    lora = next(line for line in text.splitlines() if line.startswith("| LoRA (r 16) | +1.0"))
    assert "| +1.0 | -2.0 | +1.0 | -4.0 |" in lora and "| no difference detected (p " in lora
    assert "Seeds 3, 4 of S-MFT Both, LoRA (r 16): added because at 3 seeds" in text
    assert "Seeds 0, 1, 2 (also 3, 4 for the long headline rows" in text
    assert "| mean ± 95% CI (97.5% CI) | clear |" in text  # the tables say which interval decides


def test_a_second_look_after_more_seeds_needs_the_stricter_interval():
    # +1.5 points over 5 seeds, s.d. 1.12: the 95% interval (t 2.78) excludes 0, the 97.5% one (t 3.50) does not;
    # the p-value is 0.040, which a second look counts twice (0.080)
    reference = dict.fromkeys(range(5), 0.80)
    row = {0: 0.80, 1: 0.82, 2: 0.81, 3: 0.83, 4: 0.815}
    by_seed = {"S-MFT Both": reference, "LoRA": row}
    once = report.paired_table(by_seed, "S-MFT Both", "test accuracy")[-1]
    assert once.endswith("| +1.5 ± 1.4 | yes (p 0.040) |")
    again = report.paired_table(by_seed, "S-MFT Both", "test accuracy", first_look=3)
    assert again[-1].endswith("| +1.5 ± 1.4 (± 1.7) | no difference detected (p 0.080) |")
    assert "its p-value counts twice" in again[1]
    # the same rows with no more than `first_look` seeds keep the 95% rule
    first_three = {label: {s: v for s, v in values.items() if s < 3} for label, values in by_seed.items()}
    row_of_three = report.paired_table(first_three, "S-MFT Both", "test accuracy", first_look=3)[-1]
    assert "| no difference detected (p " in row_of_three and "(±" not in row_of_three


def test_layer_rows_show_each_ranges_trained_scores_and_wait_for_their_run(tmp_path, monkeypatch):
    runs, pick, steps = _with_pilot(tmp_path, monkeypatch)
    all_layers, first = rp.long_spec(pick, "mft", "both", 0, steps), rp.layer_specs(pick, steps)[0]
    runs += [_long_ok(all_layers, 0.85, best_step=400), _long_ok(first, 0.80, best_step=240)]
    runs[-1]["result"]["trainable_parameters"] = 36_458_496
    lines = report.write_report(runs).splitlines()
    assert "| first third | 36.46M | 81.0 (1 seed, ± 2.0 s.e.) | 80.0 (1 seed, ± 2.0 s.e.) | 240 |" in lines
    assert "| all | 0.00M | 86.0 (1 seed, ± 1.7 s.e.) | 85.0 (1 seed, ± 1.8 s.e.) | 400 |" in lines
    assert "| middle third | | pending | | |" in lines


def test_new_runs_keep_the_answers_of_their_result_in_one_form():
    result = {"accuracy": 0.5, "answers_correct": "10", "best_checkpoint": {"step": 4, "answers_correct": "11"}}
    assert rp.answers_in_result(result) == {"end": "10", "best": "11"}
    assert result["best_checkpoint"] == {"step": 4}  # moved, not kept twice
    assert rp.answers_in_result({"accuracy": 0.5, "answers_correct": "10"}) == {"end": "10"}  # no curve
    assert rp.answers_in_result({"accuracy": 0.5}) is None


def test_answers_come_from_the_outputs_folder_only_when_they_give_the_recorded_accuracy(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "RUNS_FILE", tmp_path / "runs.jsonl")
    monkeypatch.setattr(rp, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    s = rp.sweep_specs()[0]
    run = {**_ok(s, 0.5), "finished_at": "2026-12-01 10:00:00"}
    run["result"]["best_checkpoint"] = {"accuracy": 0.25}
    folder = tmp_path / "outputs" / rp.slug(s)
    folder.mkdir(parents=True)

    def write(name, flags):
        (folder / name).write_text(json.dumps([{"correct": f} for f in flags]))

    write("predictions.json", [True, False, True, False])
    assert rp.answers_from_outputs(s, run["result"]) is None  # the best checkpoint's file is missing
    write("predictions-best.json", [True, True, False, False])  # 50%, not the recorded 25%: another run's file
    assert rp.answers_from_outputs(s, run["result"]) is None
    write("predictions-best.json", [False, True, False, False])
    assert rp.answers_from_outputs(s, run["result"]) == {"end": "1010", "best": "0100"}

    runs = [run]
    assert runner.store_missing_answers(runs) == 1 and runner.store_missing_answers(runs) == 0  # once
    assert rp.load_runs() == [runs[-1]] and rp.recorded_answers(runs, run) == {"end": "1010", "best": "0100"}
    again = {**run, "finished_at": "2026-12-02 10:00:00"}  # a re-run of the key: the old answers are not its own
    assert rp.recorded_answers(runs, again) is None


def test_the_report_counts_runs_per_model_build():
    first, third = _ok(rp.sweep_specs()[0], 0.5), _ok(rp.sweep_specs()[2], 0.5)
    second = {**_ok(rp.sweep_specs()[1], 0.5), "model_build": {"sha256": "abc123def456", "stage1_train_loss": 1.1483}}
    line = report.model_builds_line(rp.finished([first, second, third]))
    assert "weights abc123def456 (stage-1 loss 1.1483): 1 run." in line
    assert "not recorded (runs before 2026-12-02): 2 runs" in line and "slightly different projectors" in line
    assert "3 of these runs used a build whose stage 1 aligned the projector on captions that included" in line
    fixed = {**second, "model_build": {**second["model_build"], "assembly": 2}}
    assert "2 of these runs used a build" in report.model_builds_line(rp.finished([first, fixed, third]))


def _analysis(seed, shares):
    levels = [{"threshold": t, "share": sum(shares.values()) / len(shares) * t, "suggested_sparsity": [],
               "by_projection": {p: v * t for p, v in shares.items()}} for t in (0.1, 0.5)]
    return {"kind": "mask_analysis", "source_key": json.dumps({"seed": seed}), "levels": levels,
            "plot": {"path": f"examples/results/masks_s{seed}.png", "threshold": 0.1}}


def test_mask_seeds_table_orders_each_seeds_projections_at_the_levels_threshold():
    analyses = {1: _analysis(1, {"q": 0.002, "k": 0.003, "projector": 0.01}),
                2: _analysis(2, {"q": 0.004, "k": 0.003, "projector": 0.01})}
    lines = report.mask_seeds_table(analyses, 0.1)
    rows = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert rows[0] == "| 1 | 0.0500% | 0.0200% | 0.0300% | 0.1000% | projector > k > q |"
    assert rows[1].endswith("| projector > q > k |")
    assert lines[-1] == "Plots: [seed 1](results/masks_s1.png), [seed 2](results/masks_s2.png)."
    assert report.mask_seeds_table({1: analyses[1]}, 0.1) == []  # one seed: the main mask table says it all


def test_long_masks_of_more_seeds_are_reported_but_the_lowest_seed_sets_the_h_mft_levels(tmp_path, monkeypatch):
    runs, pick, steps = _with_pilot(tmp_path, monkeypatch)
    # stored out of seed order: the order must not matter
    runs += [_masks_of(rp.long_spec(pick, "mft", "both", seed, steps), share)
             for seed, share in ((3, 8e-3), (1, 2e-3))]
    planned = rp.plan(runs, compute_analysis=False)
    assert list(planned.long_analyses) == [1, 3]
    assert planned.long_levels == [1e-3, 2e-3, 4e-3]  # from seed 1's share, not seed 3's


def test_grid_names_its_best_cell_beside_the_picked_setting_once_complete():
    runs = [_ok(s, 0.5) for s in rp.sweep_specs()]
    pick = rp.plan(runs, compute_analysis=False).pick
    m = pick["mft"]
    grid = {rp.run_key(s): _long_ok(s, 0.8 if (s["init_score"], s["lr"]) == (5.0, 0.3) else 0.7)
            for s in rp.grid_specs()}
    lines = report.grid_section(grid, pick)
    assert "| 5, 1.3 (0.9791) | 70.0 / 70.0 | 70.0 / 70.0 | 80.0 / 80.0 |" in lines
    assert lines[-1].startswith(f"Best cell: init 5, T 1.3, lr 0.3 (80.0); the picked setting, init "
                                f"{m['init_score']:g}, T {m['temperature']:g}, lr {m['lr']:g}: 70.0.")
    grid.pop(rp.run_key(rp.grid_specs()[0]))
    assert not report.grid_section(grid, pick)[-1].startswith("Best cell")  # one cell still running


@pytest.mark.parametrize("field, value, none_marked, one_marked", [
    ("precision", "bf16 autocast, emulated kernels", "native bf16 kernels in every run",
     "1 of 2 runs on a CPU without native bf16"),
    ("lm_head_positions", "answers", "the LM head ran at every position in every run",
     "1 of 2 runs computed the LM head only at answer positions"),
    ("resumed_at_steps", [80], "no run was resumed from a checkpoint",
     "1 of 2 runs resumed from a checkpoint after an interruption"),
])
def test_report_counts_the_runs_whose_record_marks_how_they_trained(tmp_path, monkeypatch, field, value, none_marked,
                                                                     one_marked):
    monkeypatch.setattr(report, "REPORT_FILE", tmp_path / "RESULTS.md")
    plain, marked = _ok(rp.sweep_specs()[0], 0.42), _ok(rp.sweep_specs()[1], 0.43)
    marked["result"][field] = value
    assert none_marked in report.write_report([plain])
    assert one_marked in report.write_report([plain, marked])


def test_drop_in_runs_are_planned_apart_from_the_recipe_runs_and_paired_with_their_own_recipe(tmp_path, monkeypatch):
    runs, pick, steps = _with_pilot(tmp_path, monkeypatch)
    planned = rp.plan(runs, compute_analysis=False).specs
    dropin = [s for s in planned if s["phase"] == "D"]
    assert len(dropin) == len(rp.SEEDS) * len(rp.DROPIN_VARIANTS)
    headline = rp.long_spec(pick, "mft", "both", 0, steps)
    recipe = rp.dropin_spec(pick, "mft", None, 0, steps)
    # the same hyperparameters as a headline S-MFT Both run, but not the same run: the scores are scaled now
    assert recipe["lr"] == headline["lr"] and rp.run_key(recipe) != rp.run_key(headline)
    assert len({rp.slug(s) for s in planned}) == len(planned)
    trainer_default = rp.dropin_spec(pick, "trainer", 5e-5, 0, steps)
    monkeypatch.setattr("harness.easyvqa.prepare_easy_vqa",
                        lambda: {"val": "v.json", "test": "t.json", "image_folder": "img"})
    command = runner.command(trainer_default, tmp_path / "m.json")
    assert command[command.index("--optimizer") + 1] == "trainer" and command[command.index("--lr") + 1] == "5e-05"
    assert command[command.index("--score-scale") + 1] == "4096.0"
    assert "--score-scale" not in runner.command(headline, tmp_path / "m.json")  # earlier runs: unscaled scores
    for seed, accuracy in ((0, 0.80), (1, 0.82)):
        runs += [_long_ok(rp.dropin_spec(pick, "mft", None, seed, steps), accuracy),
                 _long_ok(rp.dropin_spec(pick, "trainer", 5e-5, seed, steps), accuracy - 0.01)]
    text = report.write_report(runs)
    assert "## Drop-in learning rates" in text and "| LoRA's habitual rate (2e-4) | 0.0002 | pending |" in text
    assert "minus recipe (create_mft_optimizer)'s" in text
    assert "| Trainer's default rate (5e-5) | -1.0 | -1.0 |" in text


def test_the_committed_hyperparameters_file_is_what_the_committed_records_give():
    """make demo reads examples/results/hyperparameters.json; it must hold what the plan derives from runs.jsonl
    (the runner rewrites it after every run)."""
    import examples.compare as compare

    committed = json.loads(rp.HYPERPARAMETERS_FILE.read_text())
    assert committed["methods"] == rp.validated_hyperparameters(rp.load_runs())
    assert committed["steps"] == rp.STEPS == compare.FULL["steps"]
    assert compare.validated_hyperparameters() == committed


def test_a_digits_run_trains_and_evaluates_on_the_digits_files(tmp_path, monkeypatch):
    """A run with task "digits" gets its own key, slug and data; easy-vqa runs keep the keys they had."""
    files = {name: tmp_path / f"digits-{name}.json" for name in ("train", "val", "test")}
    monkeypatch.setattr("harness.digits.prepare_digits", lambda: {**files, "image_folder": tmp_path / "img"})
    pick = {"mft": {"lr": 0.1, "init_score": 3.0, "temperature": 0.5}}
    digits_run = rp.evidence_spec(pick, "lora", 1e-3, "test", 0, 640, "digits")
    easy_run = rp.evidence_spec(pick, "lora", 1e-3, "test", 0, 640, "easy-vqa")
    assert "task" not in easy_run and rp.slug(digits_run) == "digits_" + rp.slug(easy_run)
    cmd = runner.command(digits_run, tmp_path / "m.json")
    assert cmd[cmd.index("--data") + 1] == str(files["train"]) and cmd[cmd.index("--eval-data") + 1] == str(
        files["test"]) and cmd[cmd.index("--curve-data") + 1] == str(files["val"])


def test_phase_e_tunes_each_method_over_three_rates_then_runs_the_pick_on_test():
    pick = {"mft": {"lr": 0.1, "init_score": 3.0, "temperature": 0.5}}
    tuning = rp.evidence_tuning_specs(pick, 640, "digits")
    assert len(tuning) == 9 and {s["split"] for s in tuning} == {"val"}
    assert all(s["optimizer"] == "trainer" and s["score_scale"] == rp.DROPIN_SCORE_SCALE
               for s in tuning if s["method"] == "mft")
    assert rp.evidence_pick({}, pick, 640, "digits") is None
    best = {"mft": 3e-5, "lora": 3e-3, "full": 1e-5}
    runs = {}
    for s in tuning:
        peak = 0.9 if s["lr"] == best[s["method"]] else 0.6
        runs[rp.run_key(s)] = {"result": {"curve": [{"step": 40, "val_accuracy": 0.5},
                                                    {"step": 80, "val_accuracy": peak}]}}
    assert rp.evidence_pick(runs, pick, 640, "digits") == best
    test_runs = [s for s in rp.evidence_specs(pick, 640, runs) if s["split"] == "test"]
    assert len(test_runs) == 9 and {(s["method"], s["lr"]) for s in test_runs} == set(best.items())
    assert {s.get("task") for s in test_runs} == {"digits"}


def test_the_two_points_of_the_same_runs_form_one_family():
    """A gap tested at the best checkpoint and at the end is two tests: Holm runs over both tables, so a p-value that
    one table alone would call clear (0.024 < 0.05/2) is not clear among four tests (0.024 > 0.05/4)."""
    seeds = range(3)
    table = report.paired_table({"ref": dict.fromkeys(seeds, 0.8), "x": {0: 0.9, 1: 0.91, 2: 0.92}}, "ref", "acc")
    assert "| yes (p " in table[-1]
    family = {"end a": 0.5, "end b": 0.6, "best b": 0.7}
    lonely = {"ref": dict.fromkeys(seeds, 0.8), "x": {0: 0.9, 1: 0.92, 2: 0.96}}  # p 0.019
    alone = report.paired_table(lonely, "ref", "acc")[-1]
    together = report.paired_table(lonely, "ref", "acc", family=family)[-1]
    p = float(alone.split("(p ")[1].split(")")[0])
    assert 0.05 / 4 < p < 0.05 and "| yes (p " in alone and "| no difference detected (p " in together


def test_accuracy_per_question_type_counts_each_type_over_the_seeds(monkeypatch):
    types = ["yes/no", "colour", "yes/no", "shape"] * (rp.TEST_QUESTIONS // 4)
    monkeypatch.setattr(report, "easy_vqa_question_types", lambda: types)
    right_on = {"yes/no": "1010", "all": "1111"}  # the first pattern: right on both yes/no, wrong on colour and shape
    runs = {"A": {0: {"result": {"answers_correct": {"end": right_on["yes/no"] * (rp.TEST_QUESTIONS // 4)}}}},
            "B": {0: {"result": {"answers_correct": {"end": right_on["all"] * (rp.TEST_QUESTIONS // 4)}}},
                  1: {"result": {"answers_correct": {"end": right_on["yes/no"] * (rp.TEST_QUESTIONS // 4)}}}}}
    lines = report.question_type_table(runs, [])
    assert lines[3] == "| method | seeds | yes/no | colour | shape |"
    assert "| A | 1 | 100.0 | 0.0 | 0.0 |" in lines and "| B | 2 | 100.0 | 50.0 | 50.0 |" in lines
    assert "200 yes/no, 100 colour, 100 shape" in lines[1]
