# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The benchmark scripts on a tiny random LLaVA, in seconds: variants, the fixed batch, the figures they report."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from benchmarks import accuracy_seeds, masked_linear, profile_step, train_step
from benchmarks.timing import release_checkpoint_pages
from benchmarks.variants import Variant, hold_masked_weights_in, parse_variant, prepare_variant
from harness.models import load_llava
from harness.training import StepTimer

from .examples.tiny import make_dataset, save_tiny_llava


COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results"  # reports the scripts wrote earlier

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return {"model": save_tiny_llava(root / "llava"), **make_dataset(root / "data"), "root": root}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mft", Variant("mft", "mft")),
        ("lora-r64", Variant("lora-r64", "lora", 64)),
        ("qlora-r8", Variant("qlora-r8", "qlora", 8)),
        ("mft-hard+4bit-base+adamw8bit+gc", Variant("mft-hard+4bit-base+adamw8bit+gc", "mft-hard", None,
                                                    ("4bit-base", "adamw8bit", "gc"))),
    ],
)
def test_parse_variant(text, expected):
    assert parse_variant(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("lora", "unknown method 'lora'"),
        ("mft+fast", "unknown option"),
        ("full+bf16-base", "applies to MFT methods"),
        ("mft+sgd+adamw8bit", "at most one optimizer"),
        ("mft+adafactor+adamw8bit", "at most one optimizer"),
        ("mft+bf16-base+4bit-base", "choose one of"),
    ],
)
def test_parse_variant_rejects_bad_variants(text, message):
    with pytest.raises(ValueError, match=message):
        parse_variant(text)


def _processor_and_records(tiny):
    loaded = load_llava(str(tiny["model"]))
    return loaded, train_step.training_records(str(tiny["train"]), None)


def test_fixed_batch_pads_or_cuts_to_the_sequence_length(tiny):
    loaded, records = _processor_and_records(tiny)
    processor = loaded.processor()
    padded = train_step.fixed_batch(processor, records, 3, 80, torch.device("cpu"), torch.float32)
    assert padded["input_ids"].shape == padded["labels"].shape == padded["attention_mask"].shape == (3, 80)
    assert padded["pixel_values"].shape[0] == 3
    assert (padded["labels"][:, -1] == -100).all() and (padded["attention_mask"][:, -1] == 0).all()
    cut = train_step.fixed_batch(processor, records, 3, 20, torch.device("cpu"), torch.float32)
    assert cut["input_ids"].shape == (3, 20)
    with pytest.raises(ValueError, match="would cut image tokens"):
        train_step.fixed_batch(processor, records, 3, 3, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="needs that many training records"):
        train_step.fixed_batch(processor, records, 100, 80, torch.device("cpu"), torch.float32)


def test_bf16_base_keeps_scores_and_activations_float32(tiny):
    loaded, records = _processor_and_records(tiny)
    prepared = prepare_variant(loaded.model, parse_variant("mft+bf16-base+adamw8bit"))
    from peft_mft.layer import MFTLayer

    layers = [m for m in prepared.model.modules() if isinstance(m, MFTLayer)]
    assert layers and all(m.get_base_layer().weight.dtype == torch.bfloat16 for m in layers)
    assert all(s.dtype == torch.float32 for m in layers for s in m.mft_scores.values())
    masked_weights = sum(m.get_base_layer().weight.numel() for m in layers)
    assert hold_masked_weights_in(prepared.model, torch.bfloat16) == masked_weights
    batch = train_step.fixed_batch(loaded.processor(), records, 2, 48, torch.device("cpu"), torch.float32)
    out = prepared.model(**batch)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    prepared.optimizer.step()
    largest = max((m.mft_scores["default"] for m in layers), key=torch.Tensor.numel)
    assert prepared.optimizer.state[largest]["state1"].dtype == torch.uint8  # 8-bit moments (tensors >= 4096 entries)


def test_train_step_reports_every_figure_and_its_ratio_to_full(tiny):
    out = tiny["root"] / "out"
    out.mkdir()
    for name in ("train_step.json", "train_step.md"):  # a committed earlier report, which the run replaces
        (out / name).write_bytes((COMMITTED / "cpu-lean" / name).read_bytes())
    report = train_step.main([
        "--model", str(tiny["model"]), "--data", str(tiny["train"]),
        "--methods", "full,mft-hard,lora-r8,mft+sgd,mft+adafactor",
        "--batch-size", "2", "--seq-len", "48", "--steps", "2", "--warmup", "1", "--in-process", "--out", str(out),
    ])
    results = {r["variant"]: r for r in report["results"]}
    assert json.loads((out / "train_step.json").read_text())["results"][0]["variant"] == "full"
    table = (out / "train_step.md").read_text()
    assert all(f"| {name} |" in table for name in results) and "hard-indices" in table
    full, hard, lora, sgd = results["full"], results["mft-hard"], results["lora-r8"], results["mft+sgd"]
    assert all(value == 1.0 for key, value in full["ratio_to_full"].items() if key != "merge_seconds")
    for result in results.values():
        assert result["step_seconds"]["n"] == 2 and result["step_seconds_median"] > 0
        # each phase inside its step: with 2 steps a median is a mean, so the phases' sum is at most the step's
        phases = result["phase_seconds_median"]
        assert set(phases) == set(train_step.TIMED_PHASES) and min(phases.values()) > 0
        assert sum(phases.values()) <= result["step_seconds_median"]
        assert result["peak_memory_bytes"] > 0 and len(result["load_average_before"]) == 3
        ratio = result["trainable_parameters"] / full["trainable_parameters"]
        assert result["ratio_to_full"]["trainable_parameters"] == ratio
    # scores: one per masked weight; AdamW keeps two float32 moments per score (plus a step counter per tensor)
    masked = hard["trainable_parameters"]
    assert 8 * masked <= hard["optimizer_state_bytes"] <= 8 * masked + 4 * 1000
    assert 4 * masked <= sgd["optimizer_state_bytes"] <= 4 * masked + 4 * 1000  # SGD: one momentum buffer
    # Adafactor: a row and a column vector per score matrix, far below one byte per score
    assert 0 < results["mft+adafactor"]["optimizer_state_bytes"] < masked / 2
    assert hard["adapter_bytes"] >= 4 * masked and hard["merge_seconds"] >= 0
    assert hard["compact"]["hard-bits"]["max_abs_mask_error"] == 0.0
    assert hard["compact"]["hard-bits"]["max_abs_logit_drift"] == 0.0
    assert hard["compact"]["hard-indices"]["max_abs_logit_drift"] == 0.0
    assert all(0 <= c["max_abs_logit_drift"] < 1e-3 for c in sgd["compact"].values())
    compact = hard["compact"]
    assert compact["hard-indices"]["bytes"] < compact["hard-bits"]["bytes"] < hard["adapter_bytes"] / 16
    assert lora["trainable_parameters"] < masked and lora["merge_seconds"] >= 0
    assert full["merge_seconds"] is None
    # live tensor bytes at the peak: scores (trainable) and their AdamW moments as counted above; full fine-tuning's
    # trainable bytes are every trained weight
    assert hard["tensor_memory"]["trainable"] == 4 * masked
    assert hard["tensor_memory"]["optimizer_state"] == hard["optimizer_state_bytes"]
    assert full["tensor_memory"]["trainable"] == 4 * full["trainable_parameters"]
    assert lora["tensor_memory"]["peak"] < full["tensor_memory"]["peak"]
    assert "tensor memory at its peak" in table.lower()
    assert f"| mft+sgd | {sgd['phase_seconds_median']['forward']:.3f} | " in table


def test_accuracy_mode_trains_with_trainer_including_step_in_backward(tiny):
    out = tiny["root"] / "accuracy"
    report = train_step.main([
        "--model", str(tiny["model"]), "--data", str(tiny["train"]), "--eval-data", str(tiny["test"]),
        "--methods", "full,mft+step-in-backward", "--batch-size", "2", "--accuracy-steps", "3", "--eval-samples", "4",
        "--in-process", "--out", str(out),
    ])
    results = {r["variant"]: r for r in report["results"]}
    assert set(results) == {"full", "mft+step-in-backward"} and "| mft+step-in-backward | " in (
        out / "memory_accuracy.md").read_text()
    fused = results["mft+step-in-backward"]
    # it stepped in the backward
    assert fused["optimizer"] == "OptimizerInBackward" and fused["optimizer_state_bytes"] > 0
    assert fused["eval_questions"] == 4 and fused["peak_memory_bytes"] > 0
    correct = fused["accuracy"] * 4  # a share of the 4 questions asked: a whole number of them
    assert correct == round(correct)
    assert len(fused["answers_correct"]) == 4 and fused["answers_correct"].count("1") == round(correct)
    tensors = fused["tensor_memory"]  # the second Trainer step, by category
    assert tensors["peak"] == fused["tensor_memory_peak_bytes"] > tensors["trainable"] > 0
    assert tensors["optimizer_state"] == fused["optimizer_state_bytes"]
    assert (fused["init_score"], fused["temperature"]) == (3.0, 0.5)  # the fallback preset ("tinyllama-1.1b")
    phases = fused["median_phase_seconds"]  # stepped in the backward: optimizer.step() has nothing left to do
    assert set(phases) == set(StepTimer.PHASES) and phases["optimizer"] < phases["forward_backward_clip"]
    table = (out / "memory_accuracy.md").read_text()
    assert "| forward backward clip | optimizer | after optimizer |" in table
    assert "batch 2 (each padded to its longest record)" in table  # not the timed loop's fixed length
    full = results["full"]
    assert fused["ratio_to_full"]["step_seconds_median"] == fused["median_step_seconds"] / full["median_step_seconds"]

    other_seed = tiny["root"] / "accuracy-seed1"
    train_step.main(["--model", str(tiny["model"]), "--data", str(tiny["train"]), "--eval-data", str(tiny["test"]),
                     "--methods", "full", "--batch-size", "2", "--accuracy-steps", "1", "--eval-samples", "4",
                     "--seed", "1", "--in-process", "--out", str(other_seed)])
    reports = [out / "memory_accuracy.json", other_seed / "memory_accuracy.json"]
    table = accuracy_seeds.main([str(p) for p in reports])
    accuracies = [100 * full["accuracy"], 100 * json.loads(reports[1].read_text())["results"][0]["accuracy"]]
    mean, spread = sum(accuracies) / 2, abs(accuracies[0] - accuracies[1]) / 2 ** 0.5
    assert f"| full | {accuracies[0]:.1f} | {accuracies[1]:.1f} | {mean:.1f} ± {spread:.1f} |" in table
    assert f"| mft+step-in-backward | {100 * fused['accuracy']:.1f} | - | " in table
    with pytest.raises(ValueError, match="appears in two reports"):
        accuracy_seeds.main([str(reports[0]), str(reports[0])])

    paired = accuracy_seeds.main(["--baseline", "full"] + [str(p) for p in reports])
    difference = 100 * (fused["accuracy"] - full["accuracy"])
    assert f"| mft+step-in-backward | s0 {difference:+.1f} | - | - (one seed) | s0 " in paired
    with pytest.raises(ValueError, match="'lora' is not among the variants"):
        accuracy_seeds.main(["--baseline", "lora"] + [str(p) for p in reports])


def test_accuracy_mode_resumes_finished_variants(tiny):
    out = tiny["root"] / "accuracy-resume"
    common = ["--model", str(tiny["model"]), "--data", str(tiny["train"]), "--eval-data", str(tiny["test"]),
              "--batch-size", "2", "--accuracy-steps", "1", "--eval-samples", "2", "--in-process", "--out", str(out)]
    first = train_step.main(common + ["--methods", "full"])["results"][0]
    report = train_step.main(common + ["--methods", "full,mft", "--resume"])
    assert [r["variant"] for r in report["results"]] == ["full", "mft"]
    assert report["results"][0]["train_seconds"] == first["train_seconds"]  # kept, not trained again
    with pytest.raises(ValueError, match="another setup .*accuracy_steps: 1 there, 2 here"):
        train_step.main(common + ["--accuracy-steps", "2", "--methods", "full", "--resume"])  # the last one counts


def test_compact_logit_drift_sees_other_masks_and_restores_the_trained_scores(tiny, tmp_path):
    from peft.utils import get_peft_model_state_dict

    from peft_mft.tools.export import export_compact_adapter

    loaded, records = _processor_and_records(tiny)
    batch = train_step.fixed_batch(loaded.processor(), records, 2, 48, torch.device("cpu"), torch.float32)
    model = prepare_variant(loaded.model, parse_variant("mft-hard")).model
    model.save_pretrained(tmp_path / "fresh")
    export_compact_adapter(tmp_path / "fresh", tmp_path / "fresh-bits", "hard-bits")
    with torch.no_grad():  # move the scores so that other weights are zeroed than in the fresh export
        for key, scores in model.named_parameters():
            if "mft_scores" in key:
                scores.copy_(torch.rand_like(scores))
    trained = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    model.save_pretrained(tmp_path / "trained")
    export_compact_adapter(tmp_path / "trained", tmp_path / "trained-bits", "hard-bits")
    assert train_step.compact_logit_drift(model, tmp_path / "trained-bits", batch) == 0.0
    assert train_step.compact_logit_drift(model, tmp_path / "fresh-bits", batch) > 1e-4
    assert all(torch.equal(v, trained[k]) for k, v in get_peft_model_state_dict(model).items())
    assert model.training


def test_masked_linear_benchmark_reports_a_ratio_per_layer(tmp_path):
    (tmp_path / "layer.json").write_bytes((COMMITTED / "cpu" / "masked_linear.json").read_bytes())  # replaced
    result = masked_linear.main(["--shapes", "64x32", "--tokens", "16", "--repeats", "3", "--warmup", "1",
                                 "--json", str(tmp_path / "layer.json")])
    layers = {row["layer"]: row for row in result["rows"]}
    assert set(layers) == {"dense", "mft", "mft-ste", "mft-hard", "mft-hard-reused"}
    assert layers["dense"]["ratio_to_dense"] == 1.0
    assert all(row["median"] > 0 for row in result["rows"])
    assert json.loads((tmp_path / "layer.json").read_text())["tokens"] == 16


def test_masked_linear_benchmark_sums_a_decoder_layer_from_shape_counts():
    result = masked_linear.main(["--shapes", "64x32", "32x64", "--counts", "3", "1", "--tokens", "8", "--repeats",
                                 "2", "--warmup", "0"])
    medians = {(row["shape"], row["layer"]): row["median"] for row in result["rows"]}
    for name, total in result["decoder_layer"].items():
        assert total["seconds"] == pytest.approx(3 * medians["64x32", name] + medians["32x64", name])
    assert result["decoder_layer"]["dense"]["ratio_to_dense"] == 1.0
    with pytest.raises(ValueError, match="2 counts for 1 shapes"):
        masked_linear.run([(4, 4)], 2, 1, 0, torch.device("cpu"), torch.float32, counts=[1, 2])


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")
def test_release_checkpoint_pages_keeps_mapped_weights_readable(tmp_path):
    from safetensors.torch import load_file, save_file

    original = torch.randn(512, 256)
    save_file({"w": original}, tmp_path / "w.safetensors")
    mapped = load_file(tmp_path / "w.safetensors")["w"]
    assert torch.equal(mapped, original)
    released = release_checkpoint_pages()
    assert torch.equal(mapped, original)  # read back from the file
    assert released >= original.numel() * 4  # load_file maps the file


def test_machine_description_records_allocator_and_thread_settings(monkeypatch):
    from benchmarks.timing import machine_description

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    environment = machine_description(torch.device("cpu"))["environment"]
    assert environment["MALLOC_MMAP_THRESHOLD_"] == "131072" and "UNRELATED_SETTING" not in environment


def test_sparse_sizes_sweeps_thresholds_of_a_trained_adapter(tiny):
    from peft import get_peft_model

    from benchmarks import sparse_sizes
    from peft_mft import MFTConfig

    torch.manual_seed(0)
    model = get_peft_model(load_llava(str(tiny["model"])).model,
                           MFTConfig(init_score=3.0, temperature=0.5, init_weights=False))
    adapter = tiny["root"] / "sparse-adapter"
    model.save_pretrained(adapter)
    out = tiny["root"] / "sparse"
    out.mkdir()
    for name in ("sparse_sizes.json", "sparse_sizes.md", "sparse_sizes.png"):  # committed: replaced by the run
        (out / name).write_bytes((COMMITTED / "cpu-sparse-400" / name).read_bytes())
    report = sparse_sizes.main([str(adapter), "--model", str(tiny["model"]), "--eval-data", str(tiny["test"]),
                                "--eval-samples", "4", "--thresholds", "0", "0.05", "10", "--lora-bytes",
                                "lora-r16=5000", "--out", str(out)])
    rows = {r["threshold"]: r for r in report["rows"]}
    assert rows[0.0]["kept_share"] > rows[0.05]["kept_share"] > rows[10.0]["kept_share"] == 0.0
    assert rows[0.0]["bytes"] > rows[0.05]["bytes"] > rows[10.0]["bytes"]
    assert rows[0.0]["max_logit_drift"] < 1e-2  # everything kept: float16 deviations only
    assert {p.name for p in out.iterdir()} == {"sparse_sizes.json", "sparse_sizes.md", "sparse_sizes.png"}
    assert json.loads((out / "sparse_sizes.json").read_text())["rows"] == report["rows"]
    assert "lora-r16: 0.0 MiB" in (out / "sparse_sizes.md").read_text()


def test_profile_step_times_the_phases_and_names_the_mask_operators(tiny, capsys):
    out = tiny["root"] / "profile"
    common = ["--model", str(tiny["model"]), "--data", str(tiny["train"]), "--batch-size", "2", "--steps", "2",
              "--warmup", "1", "--out", str(out)]
    full = profile_step.main(["full"] + common)
    mft = profile_step.main(["mft"] + common)
    for result in (full, mft):
        assert set(result["phase_seconds"]) == set(profile_step.PHASES) and min(result["phase_seconds"].values()) > 0
        assert len(result["tokens_per_row"]) == 2 and result["operators"][0]["self_seconds"] > 0
    # the soft mask's sigmoid runs once per masked layer in the forward and once in the backward; no mask in full
    mft_ops, full_ops = ({op["name"]: op for op in r["operators"]} for r in (mft, full))
    assert mft_ops["aten::sigmoid_"]["calls"] == 2 * mft_ops["MaskedLinearFunction"]["calls"] > 0
    assert "aten::sigmoid_" not in full_ops and "MaskedLinearFunction" not in full_ops
    table = (out / "profile.md").read_text()
    assert "| | full | mft |" in table and f"| forward | {full['phase_seconds']['forward']:.2f} | " in table
    with pytest.raises(SystemExit):
        profile_step.main(["mft"] + common + ["--batch-size", "100"])
    assert re.search(r"3 batches of 100 need 300 training records; the data has \d+", capsys.readouterr().err)
    with pytest.raises(SystemExit):
        profile_step.main(["lora"] + common)
    assert "'lora'" in capsys.readouterr().err
    # a file of the user's where a result would go is left alone
    theirs = out / "mft+gc.json"
    theirs.write_text('{"notes": "mine"}')
    with pytest.raises(SystemExit):
        profile_step.main(["mft+gc"] + common)
    refusal = capsys.readouterr().err
    assert "mft+gc.json' exists and is not an earlier output of python -m benchmarks.profile_step" in refusal
    assert theirs.read_text() == '{"notes": "mine"}' and "mft+gc" not in (out / "profile.md").read_text()


def test_answer_logits_steps_train_the_same_loss(tiny):
    report = train_step.main([
        "--model", str(tiny["model"]), "--data", str(tiny["train"]), "--methods", "mft,mft+answer-logits",
        "--batch-size", "2", "--seq-len", "48", "--steps", "2", "--warmup", "1", "--in-process",
        "--out", str(tiny["root"] / "out-answer-logits"),
    ])
    every, answers = (r for r in report["results"])
    assert answers["variant"] == "mft+answer-logits" and len(answers["losses"]) == len(every["losses"]) == 3
    # the same loss at every step (same batch, same updates); the saving needs a real vocabulary (benchmarks/README)
    torch.testing.assert_close(torch.tensor(answers["losses"]), torch.tensor(every["losses"]), rtol=1e-4, atol=1e-6)


def _users_file(folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("the user's own file")
    return folder / name


@pytest.mark.parametrize("script, argv, planted", [
    ("bf16_matmul", ["--json", "{d}/result.json"], "result.json"),
    ("bf16_emulation", ["--json", "{d}/result.json"], "result.json"),
    ("masked_linear", ["--json", "{d}/result.json"], "result.json"),
    ("train_step", ["--out", "{d}", "--methods", "mft"], "train_step.json"),
    ("train_step", ["--out", "{d}", "--methods", "mft", "--accuracy-steps", "1"], "memory_accuracy.md"),
    ("sparse_sizes", ["{d}/no-adapter", "--out", "{d}"], "sparse_sizes.png"),
])
def test_a_report_path_holding_a_users_file_is_refused_before_any_work(tmp_path, capsys, script, argv, planted):
    import importlib

    users = _users_file(tmp_path / "out", planted)
    main = importlib.import_module(f"benchmarks.{script}").main
    with pytest.raises(SystemExit) as exit_info:  # no model is built or loaded, no folder read: nothing to mock
        main([arg.format(d=tmp_path / "out") for arg in argv])
    assert exit_info.value.code == 2
    assert f"{users}' exists and is not an earlier output of python -m benchmarks.{script}" in capsys.readouterr().err
    assert users.read_text() == "the user's own file" and [p.name for p in users.parent.iterdir()] == [planted]


def test_sparse_sizes_figure_is_drawn_again_from_its_json(tmp_path):
    from benchmarks.sparse_sizes import lora_sizes_of, main

    report = {"eval_questions": 400, "scores_bytes": 400 * 2**20, "float32_accuracy": 0.9,
              "float32_accuracy_se": 0.015,
              "rows": [{"threshold": 0.01, "bytes": 17 * 2**20, "accuracy": 0.91},
                       {"threshold": 0.1, "bytes": 3 * 2**20, "accuracy": 0.895}],
              "command": "python -m benchmarks.sparse_sizes a --lora-bytes lora-r8=9926312 lora-r16=19792424 --out x"}
    assert lora_sizes_of(report) == {"lora-r8": 9926312, "lora-r16": 19792424}
    (tmp_path / "sparse_sizes.json").write_text(json.dumps(report))
    assert main(["--replot", str(tmp_path)]) == report
    assert (tmp_path / "sparse_sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
