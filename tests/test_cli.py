# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The `peft-mft` command line: analyze, compare, harden, merge, export; --help; exit 2 with one line on bad input."""

import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoTokenizer, LlamaForCausalLM

from peft_mft import MFTConfig, MFTLayer
from peft_mft.tools.analysis import analyze_masks, format_share
from peft_mft.tools.export import load_compact_adapter
from peft_mft_cli import main

from .conftest import make_llama, text_inputs
from .examples.tiny import make_tokenizer
from .hand_masks import MOVED_SCORES, TOTAL_NUMEL, hand_masked_llama


COMMANDS = ("analyze", "compare", "harden", "merge", "export")


@pytest.fixture
def adapter(tmp_path):
    folder = tmp_path / "adapter"
    hand_masked_llama().save_pretrained(folder)
    return folder


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(capsys, argv, reason):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    error_lines = [line for line in err.splitlines() if line.startswith("peft-mft")]
    assert len(error_lines) == 1 and reason in error_lines[0], err


def test_every_command_has_help(capsys):
    for argv in (["--help"], *[[command, "--help"] for command in COMMANDS]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert "usage: peft-mft" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "peft_mft", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(command in result.stdout for command in COMMANDS)


def test_analyze_prints_the_hand_computed_table(capsys, adapter):
    code, out, err = run(capsys, "analyze", adapter)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # q: 2 modules, 512 weights, 4 of them below 0.1, 6 below 0.5 (hand_masks.HAND_SCORES)
    assert rows["q"][1:3] == ["2", "512"] and rows["q"][4:6] == [format_share(4 / 512), format_share(6 / 512)]
    assert rows["k"][4] == "0%"
    assert rows["all"][1:3] == ["14", f"{TOTAL_NUMEL:,}"] and rows["all"][4] == format_share(6 / TOTAL_NUMEL)
    assert "soft (S-MFT): M = sigmoid(S / T) (paper-literal;" in out and "init_score = 10, T = 1" in out
    assert f"Suggested H-MFT sparsity (near-zero share x 0.5, 1, 2): {format_share(3 / TOTAL_NUMEL)}" in out
    assert "Analysing masks" in err  # progress bar


def test_analyze_json_matches_the_api(capsys, adapter):
    code, out, _ = run(capsys, "analyze", adapter, "--json", "--near-zero", "0.3")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(analyze_masks(adapter, near_zero_threshold=0.3).to_dict()))


def test_analyze_plot_writes_a_png(capsys, adapter, tmp_path):
    pytest.importorskip("matplotlib")
    code, _, err = run(capsys, "analyze", adapter, "--plot", tmp_path / "masks.png")
    assert code == 0 and "wrote" in err
    assert (tmp_path / "masks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_prints_overlap(capsys, adapter, tmp_path):
    hand_masked_llama(MOVED_SCORES).save_pretrained(tmp_path / "moved")  # 6 near-zero entries, 5 shared with adapter
    capsys.readouterr()
    code, out, _ = run(capsys, "compare", adapter, tmp_path / "moved", "--json")
    assert code == 0
    overall = json.loads(out)["overall"]
    assert overall["jaccard"] == 5 / 7 and overall["zeroed_both"] == 5
    code, out, _ = run(capsys, "compare", adapter, tmp_path / "moved")
    assert code == 0 and out.splitlines()[-1].split()[:5] == ["all", f"{TOTAL_NUMEL:,}", "6", "6", "5"]


def test_harden_writes_a_hard_adapter(capsys, adapter, tmp_path):
    code, out, _ = run(capsys, "harden", adapter, "--sparsity", "2%", tmp_path / "hard")
    assert code == 0 and "2% of each matrix" in out
    config = json.loads((tmp_path / "hard" / "adapter_config.json").read_text())
    assert config["mask_type"] == "hard" and config["sparsity"] == 0.02
    code, out, _ = run(capsys, "harden", adapter, "--sparsity", "0.001", tmp_path / "hard2")
    assert code == 0 and json.loads((tmp_path / "hard2" / "adapter_config.json").read_text())["sparsity"] == 0.001


def test_merge_writes_a_plain_model_equal_to_the_masked_one(capsys, tmp_path):
    base = make_llama()
    base.save_pretrained(tmp_path / "base")
    make_tokenizer().save_pretrained(tmp_path / "base")
    (tmp_path / "base" / "README.md").write_text("the base model's card")
    torch.manual_seed(2)
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    code, out, err = run(capsys, "merge", tmp_path / "adapter", tmp_path / "merged", "--base", tmp_path / "base")
    assert code == 0 and "Unloading and merging model" in err
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged")
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as saved:
        assert not any("mft" in key or "base_layer" in key for key in saved.keys())
    inputs = text_inputs()
    with torch.no_grad():
        torch.testing.assert_close(merged(inputs).logits, model(inputs).logits, atol=1e-5, rtol=0)
    # the tokenizer comes through its own save_pretrained and loads from the merged folder
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    base_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert tokenizer("red circle").input_ids == base_tokenizer("red circle").input_ids
    assert not (tmp_path / "merged" / "README.md").exists()


def test_merge_keeps_or_sets_the_dtype(capsys, tmp_path):
    make_llama().to(torch.bfloat16).save_pretrained(tmp_path / "base")
    get_peft_model(make_llama(), MFTConfig(init_weights=False)).save_pretrained(tmp_path / "adapter")
    assert run(capsys, "merge", tmp_path / "adapter", tmp_path / "auto", "--base", tmp_path / "base")[0] == 0
    assert LlamaForCausalLM.from_pretrained(tmp_path / "auto").dtype == torch.bfloat16
    argv = ("merge", tmp_path / "adapter", tmp_path / "fp32", "--base", tmp_path / "base", "--dtype", "float32")
    assert run(capsys, *argv)[0] == 0
    assert LlamaForCausalLM.from_pretrained(tmp_path / "fp32").dtype == torch.float32


def test_bad_input_exits_2_with_one_line(capsys, adapter, tmp_path):
    missing = tmp_path / "missing"
    get_peft_model(make_llama(), LoraConfig(target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    assert_bad_input(capsys, ["analyze", missing], "no such adapter folder")
    assert_bad_input(capsys, ["analyze", tmp_path / "lora"], "not an MFT one")
    assert_bad_input(capsys, ["compare", adapter, missing], "no such adapter folder")
    assert_bad_input(capsys, ["harden", tmp_path / "lora", "--sparsity", "0.1", tmp_path / "out"], "not an MFT one")
    assert_bad_input(capsys, ["merge", adapter, tmp_path / "out", "--base", missing], "base model folder")
    make_llama().save_pretrained(tmp_path / "base")
    assert_bad_input(capsys, ["merge", tmp_path / "lora", tmp_path / "out", "--base", tmp_path / "base"],
                     "not an MFT one")
    assert not (tmp_path / "out").exists()


def test_merge_shape_mismatch_exits_2_naming_module_and_shapes(capsys, adapter, tmp_path):
    wider = make_llama(intermediate_size=24)
    wider.save_pretrained(tmp_path / "wider")
    assert_bad_input(capsys, ["merge", adapter, tmp_path / "out", "--base", tmp_path / "wider"], "gate_proj")
    err_line = run(capsys, "merge", adapter, tmp_path / "out", "--base", tmp_path / "wider")[2].splitlines()[-1]
    assert "32" in err_line and "24" in err_line


def test_percentages_are_parsed_as_written(capsys, tmp_path):
    adapter = tmp_path / "soft"
    get_peft_model(make_llama(), MFTConfig(init_weights=False)).save_pretrained(adapter)
    capsys.readouterr()
    assert run(capsys, "harden", adapter, "--sparsity", "0.7%", tmp_path / "hard")[0] == 0
    assert json.loads((tmp_path / "hard" / "adapter_config.json").read_text())["sparsity"] == 0.007
    assert run(capsys, "harden", adapter, "--sparsity", "29%", tmp_path / "hard29")[0] == 0
    hard = PeftModel.from_pretrained(make_llama(), tmp_path / "hard29")
    mask = hard.base_model.model.model.layers[0].mlp.gate_proj.get_mask("default")  # 32 x 16 = 512 entries
    assert int((mask == 0).sum()) == 148  # floor(0.29 * 512) = floor(148.48)


def test_bad_arguments_exit_2(capsys, adapter, tmp_path):
    for argv in (["harden", adapter, "--sparsity", "lots", tmp_path / "out"], ["harden", adapter, tmp_path / "out"],
                 [], ["harden", adapter, "--sparsity", "nan", tmp_path / "out"]):
        with pytest.raises(SystemExit) as exit_info:
            main([str(arg) for arg in argv])
        assert exit_info.value.code == 2
    assert "expected a fraction" in capsys.readouterr().err


def test_merged_model_loads_like_the_adapter_on_its_base(capsys, adapter, tmp_path):
    make_llama().save_pretrained(tmp_path / "base")
    assert run(capsys, "merge", adapter, tmp_path / "merged", "--base", tmp_path / "base")[0] == 0
    with_adapter = PeftModel.from_pretrained(make_llama(), adapter)
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged")
    weight = merged.model.layers[0].self_attn.q_proj.weight
    want = with_adapter.base_model.model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(weight, want.get_base_weight() * want.get_mask("default"))


def masks_of(model):
    return {name: layer.get_mask("default") for name, layer in model.named_modules() if isinstance(layer, MFTLayer)}


def test_export_writes_compact_folders_that_load(capsys, adapter, tmp_path):
    code, out, _ = run(capsys, "export", adapter, "--format", "fp16", tmp_path / "fp16")
    assert code == 0 and "soft-fp16, 14 layers" in out
    want = masks_of(PeftModel.from_pretrained(make_llama(), adapter))
    got = masks_of(load_compact_adapter(make_llama(), tmp_path / "fp16"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-3, rtol=0)
    assert run(capsys, "harden", adapter, "--sparsity", "0.05", tmp_path / "hard")[0] == 0
    code, out, _ = run(capsys, "export", tmp_path / "hard", "--format", "hard-indices", tmp_path / "indices")
    assert code == 0 and "largest mask error 0;" in out
    want = masks_of(PeftModel.from_pretrained(make_llama(), tmp_path / "hard"))
    got = masks_of(load_compact_adapter(make_llama(), tmp_path / "indices"))
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_export_bad_input_exits_2(capsys, adapter, tmp_path):
    get_peft_model(make_llama(), LoraConfig(target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    assert_bad_input(capsys, ["export", adapter, "--format", "bits", tmp_path / "out"], "holds a soft adapter")
    assert_bad_input(capsys, ["export", tmp_path / "missing", "--format", "fp16", tmp_path / "out"], "no such adapter")
    assert_bad_input(capsys, ["export", tmp_path / "lora", "--format", "fp16", tmp_path / "out"], "not an MFT one")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(adapter), "--format", "fp8", str(tmp_path / "out")])
    assert exit_info.value.code == 2


def test_a_bug_is_not_reported_as_bad_input(capsys, adapter, monkeypatch):
    import peft_mft.tools.cli

    for error in (ValueError("internal bug, not the user's input"), PermissionError(13, "Permission denied")):

        def broken(*args, **kwargs):
            raise error

        monkeypatch.setattr(peft_mft.tools.cli, "analyze_masks", broken)
        with pytest.raises(type(error)):  # a traceback and exit 1 from the interpreter, not exit 2
            main(["analyze", str(adapter)])


def test_a_bug_exits_1_with_a_traceback_from_the_command(tmp_path):
    script = ("import sys, peft_mft.tools.cli as c, peft_mft_cli; c.analyze_masks = lambda *a, **k: 1 / 0; "
              "sys.exit(peft_mft_cli.main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "analyze", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr


def test_version_and_help_for_every_argument(capsys):
    import peft_mft

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"peft-mft {peft_mft.__version__}"
    from peft_mft_cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help, f"peft-mft {name} {action.option_strings or action.dest} has no help"


def test_one_meaning_per_flag_across_commands():
    from peft_mft_cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    actions = {(name, flag): action for name, sub in subparsers.items() for action in sub._actions
               for flag in action.option_strings}
    assert not any(flag == "--threshold" for _, flag in actions)  # it meant a mask level in one verb, a cut in another
    assert actions["analyze", "--near-zero"].default == actions["compare", "--near-zero"].default
    assert all("base model folder" in actions[verb, "--base"].help for verb in ("merge", "export"))


@pytest.mark.parametrize("value, says", [("5", "did you mean 5%?"), ("1.5", "must be in [0, 1), got 1.5"),
                                         ("120%", "must be in [0, 1), got 120%")])
def test_a_sparsity_outside_0_1_is_refused_with_a_hint(capsys, adapter, tmp_path, value, says):
    with pytest.raises(SystemExit) as exit_info:
        main(["harden", str(adapter), str(tmp_path / "out"), "--sparsity", value])
    assert exit_info.value.code == 2 and says in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_hub_id_is_refused_with_how_to_download_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_bad_input(capsys, ["analyze", "someone/mft-adapter"], "looks like a Hugging Face Hub id")
    assert_bad_input(capsys, ["merge", "someone/mft-adapter", "out", "--base", "org/base-model"],
                     "huggingface-cli download org/base-model")


def test_help_imports_neither_torch_nor_peft_and_prints_no_warning():
    """`peft-mft --help` answers before any heavy import (torch alone takes seconds on a small machine), and without
    a third-party warning."""
    script = ("import sys, peft_mft_cli\ntry:\n    peft_mft_cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in ('torch', 'peft', 'transformers', 'peft_mft') if m in sys.modules))")
    for argv in (["--help"], ["export", "--help"], ["--version"], ["harden", "x", "y", "--sparsity", "5"]):
        run = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
        assert run.stdout.strip().splitlines()[-1] == "[]", (argv, run.stdout[-300:])
        assert "warn" not in run.stderr.lower(), (argv, run.stderr[-500:])


def test_the_help_shows_the_librarys_own_values():
    import peft_mft_cli
    from peft_mft.tools.analysis import NEAR_ZERO_THRESHOLD
    from peft_mft.tools.export import COMPACT_FORMATS
    from peft_mft.tools.sparse_threshold import CALIBRATION_DESCRIPTION

    assert peft_mft_cli.NEAR_ZERO_THRESHOLD == NEAR_ZERO_THRESHOLD
    assert set(peft_mft_cli.COMPACT_FORMATS) == set(COMPACT_FORMATS) >= set(peft_mft_cli.FORMAT_ALIASES.values())
    assert peft_mft_cli.CALIBRATION_DESCRIPTION == CALIBRATION_DESCRIPTION


def test_card_writes_the_mft_section_into_peft_s_card(tmp_path, capsys):
    from .hand_masks import hand_masked_llama

    hand_masked_llama().save_pretrained(tmp_path)
    assert "Mask Fine-Tuning" not in (tmp_path / "README.md").read_text()  # save_pretrained alone: PEFT's card
    assert main(["card", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "## Mask Fine-Tuning (MFT) adapter" in text and "### Framework versions" in text
    assert main(["card", str(tmp_path / "missing")]) == 2 and "no such adapter folder" in capsys.readouterr().err
