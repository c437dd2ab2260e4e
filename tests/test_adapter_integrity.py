# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""An adapter folder is loaded, merged or exported only when it is whole and consistent: tensors it does not declare,
a config that does not belong to its weights, NaN/inf scores and malformed compact arrays are refused by name."""

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from peft_mft import AdapterFileError, MFTConfig
from peft_mft_cli import main

from .conftest import make_llama
from .test_reliability import logits, trained_like


WEIGHTS = "adapter_model.safetensors"


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def edit_weights(folder, edit) -> None:
    """Rewrite `folder`'s weight file with `edit(state_dict)` applied."""
    state = load_file(folder / WEIGHTS)
    edit(state)
    save_file(state, folder / WEIGHTS)


# ---- tensors the config does not declare -------------------------------------------------------------------------


@pytest.fixture
def with_extra_embedding(tmp_path):
    """A soft adapter with modules_to_save=['lm_head'] and a zero `model.embed_tokens.weight` slipped into its file."""
    model = get_peft_model(make_llama(), MFTConfig(modules_to_save=["lm_head"], init_weights=False))
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    edit_weights(folder, lambda s: s.__setitem__("base_model.model.model.embed_tokens.weight", torch.zeros(64, 16)))
    return folder


def test_a_base_weight_in_the_adapter_file_is_refused_by_name_and_not_loaded(with_extra_embedding):
    base = make_llama()
    embeddings = base.model.embed_tokens.weight.detach().clone()
    with pytest.raises(AdapterFileError, match=r"model\.embed_tokens\.weight.*overwrite the base model"):
        PeftModel.from_pretrained(base, with_extra_embedding)
    assert torch.equal(base.model.embed_tokens.weight, embeddings)


@pytest.mark.parametrize("command", [["export", "--format", "fp16"], ["harden", "--sparsity", "0.1"]])
def test_export_and_harden_refuse_a_base_weight_in_the_adapter_file(capsys, tmp_path, with_extra_embedding, command):
    code, out, err = run_cli(capsys, command[0], with_extra_embedding, tmp_path / "out", *command[1:])
    assert code == 2 and "embed_tokens.weight" in err
    assert not (tmp_path / "out").exists()


def test_modules_to_save_weights_still_load(tmp_path):
    model = get_peft_model(make_llama(), MFTConfig(modules_to_save=["lm_head"], init_weights=False))
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(2.0)
    model.save_pretrained(tmp_path / "adapter")
    assert torch.equal(logits(PeftModel.from_pretrained(make_llama(), tmp_path / "adapter")), logits(model))


# ---- NaN / inf and dtypes of scores -------------------------------------------------------------------------------

FIRST_SCORES = "base_model.model.model.layers.0.self_attn.q_proj.mft_scores"


@pytest.fixture
def soft_adapter(tmp_path):
    folder = tmp_path / "soft"
    trained_like(1).save_pretrained(folder)
    return folder


@pytest.fixture
def hard_adapter(tmp_path):
    folder = tmp_path / "hard"
    get_peft_model(make_llama(), MFTConfig(mask_type="hard", sparsity=0.1)).save_pretrained(folder)
    return folder


def poison(folder, value: float) -> None:
    def edit(state):
        state[FIRST_SCORES][0, 0] = value

    edit_weights(folder, edit)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    "command",
    [["export", "--format", "sparse", "--min-change", "0.01"], ["export", "--format", "fp16"],
     ["export", "--format", "int8"], ["harden", "--sparsity", "0.1"]],
)
def test_soft_adapter_with_nonfinite_scores_is_refused_before_writing(capsys, tmp_path, soft_adapter, value, command):
    poison(soft_adapter, value)
    code, out, err = run_cli(capsys, command[0], soft_adapter, tmp_path / "out", *command[1:])
    assert code == 2 and "model.layers.0.self_attn.q_proj" in err and "NaN or inf" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["analyze"], ["export", "OUT", "--format", "bits"],
                                     ["export", "OUT", "--format", "indices"]])
def test_hard_adapter_with_a_nan_score_exits_2_naming_the_module(capsys, tmp_path, hard_adapter, command):
    poison(hard_adapter, float("nan"))
    argv = [tmp_path / "out" if arg == "OUT" else arg for arg in command[1:]]
    code, out, err = run_cli(capsys, command[0], hard_adapter, *argv)
    assert code == 2 and "model.layers.0.self_attn.q_proj" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_scores_of_another_dtype_are_refused(soft_adapter, dtype):
    edit_weights(soft_adapter, lambda s: s.__setitem__(FIRST_SCORES, s[FIRST_SCORES].to(dtype)))
    with pytest.raises(AdapterFileError, match=rf"q_proj' \({str(dtype)[6:]}\).*float32"):
        PeftModel.from_pretrained(make_llama(), soft_adapter)


def test_scores_kept_in_a_bf16_base_dtype_save_and_load(tmp_path):
    base = make_llama().to(torch.bfloat16)
    with pytest.warns(UserWarning, match="autocast_adapter_dtype=False"):
        model = get_peft_model(base, MFTConfig(init_weights=False), autocast_adapter_dtype=False)
    model.save_pretrained(tmp_path / "bf16")
    assert model.peft_config["default"].scores_dtype == "bfloat16"
    loaded = PeftModel.from_pretrained(make_llama().to(torch.bfloat16), tmp_path / "bf16")
    assert torch.equal(logits(loaded), logits(model))


# ---- loading into an existing adapter keeps its config: refused where the mask settings differ ---------------------


def test_load_into_an_existing_adapter_with_another_temperature_is_refused(tmp_path):
    from peft_mft import load_adapter

    trained = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=0.5, init_weights=False))
    trained.save_pretrained(tmp_path / "t05")
    model = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=2.3))
    with pytest.raises(AdapterFileError, match=r"temperature 2\.3 here, 0\.5 in"):
        load_adapter(model, tmp_path / "t05")
    same = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=0.5))
    assert torch.equal(logits(load_adapter(same, tmp_path / "t05")), logits(trained))


def test_hard_adapter_into_a_soft_slot_is_refused(tmp_path, hard_adapter):
    from peft_mft import load_adapter

    model = get_peft_model(make_llama(), MFTConfig())
    with pytest.raises(AdapterFileError, match=r"mask_type 'soft' here, 'hard' in"):
        load_adapter(model, hard_adapter)


def test_resuming_a_checkpoint_under_other_mask_settings_is_refused(tmp_path):
    from transformers import TrainingArguments

    from peft_mft.training.trainer import AtomicCheckpointTrainer

    from .conftest import text_inputs

    def trainer(temperature, max_steps):
        model = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=temperature))
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=max_steps,
                                 save_strategy="steps", save_steps=1, report_to=[], use_cpu=True, disable_tqdm=True)
        dataset = [{"input_ids": row, "labels": row} for row in text_inputs(batch=4)]
        return AtomicCheckpointTrainer(model=model, args=args, train_dataset=dataset)

    trainer(0.5, 1).train()
    with pytest.raises(AdapterFileError, match=r"temperature 2\.3 here, 0\.5 in"):
        trainer(2.3, 2).train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    trainer(0.5, 2).train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


# ---- compact folders: every stored array is checked ----------------------------------------------------------------


def tampered_compact(tmp_path, adapter, fmt, edit, threshold=None):
    """Export `adapter` as `fmt`, then apply `edit(tensors, first_layer_prefix)` to its compact weights."""
    import json

    from peft_mft.tools.export import COMPACT_META_NAME, COMPACT_WEIGHTS_NAME, export_compact_adapter

    out = tmp_path / fmt
    export_compact_adapter(adapter, out, fmt, threshold=threshold)
    meta = json.loads((out / COMPACT_META_NAME).read_text())
    prefix = next(iter(meta["layers"]))
    tensors = load_file(out / COMPACT_WEIGHTS_NAME)
    edit(tensors, prefix)
    save_file(tensors, out / COMPACT_WEIGHTS_NAME)
    return out


def set_entry(suffix, index, value, dtype=None):
    def edit(tensors, prefix):
        tensor = tensors[prefix + suffix]
        tensor = tensor.to(dtype) if dtype is not None else tensor.clone()
        tensor[index] = value
        tensors[prefix + suffix] = tensor
    return edit


def truncate(suffix, keep):
    def edit(tensors, prefix):
        tensors[prefix + suffix] = tensors[prefix + suffix][:keep].clone()
    return edit


@pytest.mark.parametrize(
    "fmt, edit, problem",
    [
        ("hard-indices", set_entry(".zeroed_columns", 0, -1, torch.int32), r"column is outside \[0, 32\)"),
        ("hard-indices", set_entry(".zeroed_columns", 0, 40000), r"column is outside \[0, 32\)"),
        ("hard-indices", set_entry(".zeroed_per_row", 0, 5), "zeroed_columns has shape"),
        ("hard-indices", set_entry(".zeroed_per_row", 0, -1), "counts outside"),
        ("hard-bits", truncate(".keep_bits", 3), "keep_bits has shape"),
        ("soft-sparse", set_entry(".kept_columns", 1, 0), "repeat or are out of order"),
        ("soft-int8", set_entry(".row_min", 0, -0.5), "row minimum is negative"),
        ("soft-fp16", set_entry(".mask_delta_fp16", (0, 0), float("nan")), "NaN or inf"),
    ],
)
def test_malformed_compact_arrays_are_refused_naming_file_and_layer(tmp_path, soft_adapter, hard_adapter, fmt, edit,
                                                                    problem):
    from peft_mft.tools.export import load_compact_adapter

    adapter = hard_adapter if fmt.startswith("hard") else soft_adapter
    folder = tampered_compact(tmp_path, adapter, fmt, edit, threshold=0.0 if fmt == "soft-sparse" else None)
    with pytest.raises(AdapterFileError, match=rf"mft_compact\.safetensors: layer '[^']*down_proj' .*{problem}"):
        load_compact_adapter(make_llama(), folder)


def test_compact_layers_listed_as_a_list_are_refused(tmp_path, hard_adapter):
    import json

    from peft_mft.tools.export import COMPACT_META_NAME, export_compact_adapter, load_compact_adapter

    export_compact_adapter(hard_adapter, tmp_path / "bits", "hard-bits")
    meta_file = tmp_path / "bits" / COMPACT_META_NAME
    meta = json.loads(meta_file.read_text())
    meta["layers"] = list(meta["layers"])
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match="'layers' must map each layer"):
        load_compact_adapter(make_llama(), tmp_path / "bits")


# ---- one output folder, one command ------------------------------------------------------------------------------


def test_export_over_an_earlier_harden_output_leaves_only_the_export(capsys, tmp_path, soft_adapter):
    from peft_mft.tools.export import load_compact_adapter

    out = tmp_path / "out"
    assert run_cli(capsys, "harden", soft_adapter, out, "--sparsity", "0.1")[0] == 0
    assert run_cli(capsys, "export", soft_adapter, out, "--format", "fp16", "--overwrite")[0] == 0
    assert not (out / WEIGHTS).exists()  # harden's mask-valued weights are gone with its config
    loaded = load_compact_adapter(make_llama(), out)
    torch.testing.assert_close(logits(loaded), logits(PeftModel.from_pretrained(make_llama(), soft_adapter)),
                               atol=1e-3, rtol=0)


def test_export_does_not_leave_a_foreign_adapter_weight_file_beside_its_config(capsys, tmp_path, soft_adapter):
    out = tmp_path / "mine"
    out.mkdir()
    (out / WEIGHTS).write_bytes(b"someone's weights")
    code, _, err = run_cli(capsys, "export", soft_adapter, out, "--format", "fp16", "--overwrite")
    assert code == 2 and "adapter_model.safetensors" in err and "nobody saved" in err
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS] and (out / WEIGHTS).read_bytes() == b"someone's weights"


def test_a_command_writing_the_same_new_folder_meanwhile_makes_the_other_fail(capsys, tmp_path, soft_adapter,
                                                                                 monkeypatch):
    import peft_mft.tools.export as export
    from peft_mft.tools.harden import harden_adapter

    out = tmp_path / "out"
    real_encode = export.encode_mask

    def encode_while_harden_writes(*args, **kwargs):
        if not out.exists():
            harden_adapter(soft_adapter, 0.1, out)  # the other command finishes first
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(export, "encode_mask", encode_while_harden_writes)
    code, _, err = run_cli(capsys, "export", soft_adapter, out, "--format", "fp16")
    assert code == 2 and "changed while" in err
    assert "mft_compact.json" not in {p.name for p in out.iterdir()}  # harden's output, whole and alone
    PeftModel.from_pretrained(make_llama(), out)


def test_harden_weights_beside_a_soft_config_are_refused_on_load(capsys, tmp_path, soft_adapter):
    out = tmp_path / "hard"
    assert run_cli(capsys, "harden", soft_adapter, out, "--sparsity", "0.1")[0] == 0
    (out / "adapter_config.json").write_bytes((soft_adapter / "adapter_config.json").read_bytes())
    with pytest.raises(AdapterFileError, match="mask_type 'hard' in the weights, 'soft' in the config"):
        PeftModel.from_pretrained(make_llama(), out)


# ---- unclear failures: each names the path and the reason --------------------------------------------------------


def test_an_unwritable_earlier_output_is_refused_before_any_work(capsys, tmp_path, soft_adapter, monkeypatch):
    import os

    out = tmp_path / "hard"
    assert run_cli(capsys, "harden", soft_adapter, out, "--sparsity", "0.1")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_access = os.access
    # as a read-only folder answers for a user who is not root (root may write anything)
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == out else real_access(path, mode))
    code, _, err = run_cli(capsys, "harden", soft_adapter, out, "--sparsity", "0.2")
    assert code == 2 and f"{str(out)!r} is not writable" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if ".saving-" in p.name] == []


@pytest.mark.parametrize("command", ["harden", "export", "merge"])
def test_an_output_under_a_file_is_refused_before_any_work(capsys, tmp_path, soft_adapter, command):
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "out"
    argv = {"harden": ["harden", soft_adapter, out, "--sparsity", "0.1"],
            "export": ["export", soft_adapter, out, "--format", "fp16"],
            "merge": ["merge", soft_adapter, out, "--base", tmp_path / "no-base-needed"]}[command]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "a-file' is a file, not a folder" in err, err


def test_a_legacy_torch_save_bin_adapter_loads(tmp_path, soft_adapter):
    from peft_mft import load_adapter

    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((soft_adapter / "adapter_config.json").read_bytes())
    torch.save(load_file(soft_adapter / WEIGHTS), folder / "adapter_model.bin", _use_new_zipfile_serialization=False)
    expected = logits(PeftModel.from_pretrained(make_llama(), soft_adapter))
    assert torch.equal(logits(load_adapter(make_llama(), folder)), expected)
    assert torch.equal(logits(PeftModel.from_pretrained(make_llama(), folder)), expected)


@pytest.mark.parametrize("kind, says", [("dangling", "symbolic link to .*which does not exist"),
                                        ("device", "symbolic link to '/dev/null', which is a device"),
                                        ("folder", "it is a folder")])
def test_a_weight_file_that_is_not_a_file_says_what_it_is(tmp_path, soft_adapter, kind, says):
    from peft_mft import load_adapter

    weights = soft_adapter / WEIGHTS
    weights.unlink()
    if kind == "dangling":
        weights.symlink_to(tmp_path / "gone.safetensors")
    elif kind == "device":
        weights.symlink_to("/dev/null")
    else:
        weights.mkdir()
    for load in (load_adapter, PeftModel.from_pretrained):
        with pytest.raises(AdapterFileError, match=rf"adapter_model\.safetensors cannot be read.*{says}"):
            load(make_llama(), soft_adapter)
