# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Never lose work: atomic saves that survive an interrupted save, and loading errors that name the file and the
problem (truncated or corrupted file, another base model, invalid config, non-MFT or pickle-only folder), through
both `peft_mft.load_adapter` and PEFT's own `PeftModel.from_pretrained`. NaN/inf scores are refused at save, load
and merge, optionally every training step; saturated soft-mask settings warn."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

import peft_mft
from peft_mft import (
    AdapterFileError,
    FiniteScoresCallback,
    MFTConfig,
    MFTLayer,
    NonFiniteScoresError,
    atomic_directory,
    check_finite_scores,
    create_mft_optimizer,
    load_adapter,
    save_adapter,
)
from peft_mft.config import MFT_PRESETS
from peft_mft.training.optim import score_parameters
from peft_mft.training.trainer import AtomicCheckpointTrainer

from .conftest import make_llama, text_inputs


REPO = Path(__file__).resolve().parents[1]
FIRST_MODULE = "model.layers.0.self_attn.q_proj"


def logits(model):
    with torch.no_grad():
        return model(text_inputs()).logits


def trained_like(seed):
    """An MFT model with random scores (stands in for a trained adapter); `seed` picks the scores."""
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in score_parameters(model):
            param.add_(torch.randn_like(param))
    return model


def first_layer(model) -> MFTLayer:
    return dict(model.named_modules())[f"base_model.model.{FIRST_MODULE}"]


def staging_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


@pytest.fixture
def saved(tmp_path):
    """(folder, model): an adapter saved with save_adapter."""
    model = trained_like(1)
    return save_adapter(model, tmp_path / "adapter"), model


# ---- atomic saving ----------------------------------------------------------------------------------------------


def test_save_adapter_writes_a_loadable_safetensors_adapter(saved):
    folder, model = saved
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(folder))
    assert torch.equal(logits(load_adapter(make_llama(), folder)), logits(model))
    assert staging_leftovers(folder) == []


@pytest.mark.parametrize("writer", ["save_pretrained", "save_adapter"])
def test_bin_adapter_round_trips_like_every_peft_tuner(tmp_path, writer):
    model = trained_like(1)
    if writer == "save_pretrained":
        model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    else:
        save_adapter(model, tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    assert not (tmp_path / "bin" / "adapter_model.safetensors").exists()
    assert torch.equal(logits(PeftModel.from_pretrained(make_llama(), tmp_path / "bin")), logits(model))
    assert torch.equal(logits(load_adapter(make_llama(), tmp_path / "bin")), logits(model))


def test_an_interrupted_save_leaves_the_previous_adapter_intact(saved, monkeypatch):
    folder, model = saved
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}

    def write_half_then_die(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr("peft.peft_model.safe_save_file", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(trained_like(2), folder)
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    assert staging_leftovers(folder) == []
    assert torch.equal(logits(PeftModel.from_pretrained(make_llama(), folder)), logits(model))


KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
import peft.peft_model
from tests.test_reliability import save_adapter, trained_like

def write_half_then_get_killed(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"\\x00" * 100)
    os.kill(os.getpid(), signal.SIGKILL)  # no except/finally block runs, as in a real crash

peft.peft_model.safe_save_file = write_half_then_get_killed
save_adapter(trained_like(2), sys.argv[1])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_process_killed_mid_save_leaves_the_previous_adapter_intact(saved):
    folder, model = saved
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder)], cwd=REPO, env=env, capture_output=True)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    assert len(staging_leftovers(folder)) == 1  # the hidden half-written staging folder, never read
    assert torch.equal(logits(PeftModel.from_pretrained(make_llama(), folder)), logits(model))


def test_plain_save_pretrained_interrupted_while_writing_the_config_mixes_two_adapters(tmp_path, monkeypatch):
    """What docs/reliability.md says about plain `save_pretrained`: it writes the weights (safetensors >= 0.8 renames
    that one file into place) and then the config in place, so an interruption in between leaves the new weights
    beside a truncated config. `save_adapter` in the same situation keeps the previous folder (tests above);
    `load_adapter` names the broken file."""
    folder = save_adapter(trained_like(1), tmp_path / "adapter")
    old_weights = (folder / "adapter_model.safetensors").read_bytes()

    def write_half_then_die(self, save_directory, **kwargs):
        (Path(save_directory) / "adapter_config.json").write_text('{"peft_type": "MF')
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr("peft.config.PeftConfigMixin.save_pretrained", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        trained_like(2).save_pretrained(folder)
    monkeypatch.undo()
    assert (folder / "adapter_model.safetensors").read_bytes() != old_weights  # new weights, broken config
    invalid = re.escape(str(folder / "adapter_config.json")) + " is not a valid JSON object"
    with pytest.raises(AdapterFileError, match=invalid):
        load_adapter(make_llama(), folder)


def test_save_adapter_keeps_other_files_in_the_folder(saved):
    folder, _ = saved
    (folder / "tokenizer.json").write_text("{}")
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").write_text("kept")
    save_adapter(trained_like(2), folder)
    assert (folder / "tokenizer.json").read_text() == "{}"
    assert (folder / "extra" / "notes.txt").read_text() == "kept"
    assert torch.equal(logits(load_adapter(make_llama(), folder)), logits(trained_like(2)))


def test_replacing_without_an_atomic_exchange_still_works(saved, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is unavailable (non-Linux), the old folder is renamed aside, then removed."""
    folder, _ = saved
    monkeypatch.setattr(peft_mft.atomic, "_exchange", lambda first, second: False)
    save_adapter(trained_like(2), folder)
    assert torch.equal(logits(load_adapter(make_llama(), folder)), logits(trained_like(2)))
    assert staging_leftovers(folder) == []


def test_saving_through_a_symlink_replaces_the_folder_it_points_to(saved):
    folder, _ = saved
    link = folder.parent / "latest"
    link.symlink_to(folder)
    save_adapter(trained_like(2), link)
    assert link.is_symlink() and link.resolve() == folder.resolve()
    assert torch.equal(logits(load_adapter(make_llama(), folder)), logits(trained_like(2)))


def test_atomic_directory_error_leaves_target_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "a.txt").write_text("new")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old" and staging_leftovers(target) == []
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"


def test_save_adapter_on_a_non_main_process_writes_nothing(tmp_path):
    save_adapter(trained_like(1), tmp_path / "adapter", is_main_process=False)
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()


# ---- atomic Trainer checkpoints ---------------------------------------------------------------------------------


class FailWhileCheckpointing(Exception):
    pass


def checkpointing_trainer(trainer_cls, tmp_path, fail_at_step=None):
    model = get_peft_model(make_llama(), MFTConfig())
    dataset = [{"input_ids": row, "labels": row} for row in text_inputs(batch=4)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, save_strategy="steps", save_steps=1,
        save_total_limit=1, report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    optimizers = (create_mft_optimizer(model), None)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, optimizers=optimizers)
    if fail_at_step is not None:
        original = trainer._save_rng_state

        def save_rng_state(output_dir):  # the adapter and optimizer are already written by then
            if trainer.state.global_step == fail_at_step:
                raise FailWhileCheckpointing(output_dir)
            original(output_dir)

        trainer._save_rng_state = save_rng_state
    return trainer


def test_plain_trainer_leaves_a_partial_checkpoint_that_resume_would_pick(tmp_path):
    with pytest.raises(FailWhileCheckpointing):
        checkpointing_trainer(Trainer, tmp_path, fail_at_step=2).train()
    latest = Path(get_last_checkpoint(str(tmp_path)))
    assert latest.name == "checkpoint-2" and not (latest / "trainer_state.json").exists()


def test_atomic_checkpoint_trainer_never_exposes_a_partial_checkpoint(tmp_path):
    with pytest.raises(FailWhileCheckpointing):
        checkpointing_trainer(AtomicCheckpointTrainer, tmp_path, fail_at_step=2).train()
    latest = Path(get_last_checkpoint(str(tmp_path)))
    assert latest.name == "checkpoint-1" and (latest / "trainer_state.json").exists()
    assert (latest / "adapter_model.safetensors").exists() and (latest / "optimizer.pt").exists()


def test_atomic_checkpoint_trainer_rotates_and_records_paths(tmp_path):
    trainer = checkpointing_trainer(AtomicCheckpointTrainer, tmp_path)
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # save_total_limit=1, nothing hidden left
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    load_adapter(make_llama(), tmp_path / "checkpoint-2")


# ---- loading errors name the file and the problem ---------------------------------------------------------------


def both_loaders():
    """PEFT's own loader and the library's: the errors must come through both."""
    return [
        pytest.param(lambda base, folder: PeftModel.from_pretrained(base, folder), id="PeftModel.from_pretrained"),
        pytest.param(lambda base, folder: load_adapter(base, folder), id="peft_mft.load_adapter"),
    ]


@pytest.mark.parametrize("load", both_loaders())
@pytest.mark.parametrize("keep", ["5 bytes", "half", "all but one byte"])
def test_truncated_weight_file_is_named(saved, load, keep):
    folder, _ = saved
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: {"5 bytes": 5, "half": len(data) // 2, "all but one byte": len(data) - 1}[keep]])
    with pytest.raises(AdapterFileError, match=re.escape(str(weights)) + ".*truncated or corrupted"):
        load(make_llama(), folder)


@pytest.mark.parametrize("load", both_loaders())
def test_corrupted_header_is_named(saved, load):
    folder, _ = saved
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"#" * 32  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match=re.escape(str(weights))):
        load(make_llama(), folder)


@pytest.mark.parametrize("load", both_loaders())
def test_corrupted_score_bytes_that_give_nan_name_the_module(saved, load):
    folder, _ = saved
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    key = f"base_model.model.{FIRST_MODULE}.mft_scores"
    start = 8 + header_length + header[key]["data_offsets"][0]
    data[start : start + 4] = b"\xff\xff\xff\xff"  # a float32 NaN
    weights.write_bytes(bytes(data))
    with pytest.raises(NonFiniteScoresError, match=re.escape(repr(FIRST_MODULE)) + f".*{re.escape(str(folder))}"):
        load(make_llama(), folder)


@pytest.mark.parametrize("load", both_loaders())
def test_adapter_for_another_base_model_names_module_and_both_shapes(saved, load):
    folder, _ = saved
    with pytest.raises(AdapterFileError) as error:
        load(make_llama(intermediate_size=24), folder)
    message = str(error.value)
    assert "'model.layers.0.mlp.gate_proj': (32, 16) in the adapter, (24, 16) here" in message
    assert "another base model" in message and str(folder) in message


@pytest.mark.parametrize("load", both_loaders())
def test_adapter_for_a_deeper_or_shallower_model_names_the_modules(saved, load):
    folder, _ = saved
    with pytest.raises(AdapterFileError, match=r"has scores for 'model\.layers\.1\..*does not have"):
        load(make_llama(num_hidden_layers=1), folder)
    with pytest.raises(AdapterFileError, match=r"has no scores for 'model\.layers\.2\..*another base model"):
        load(make_llama(num_hidden_layers=3), folder)


@pytest.mark.parametrize("load", both_loaders())
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", 0.0, "temperature must be a finite number > 0"),
        ("temperature", -1.0, "temperature must be a finite number > 0"),
        ("mask_type", "medium", "mask_type must be 'soft' or 'hard'"),
        ("sparsity", 1.0, r"sparsity .* must be in \[0, 1\)"),
        ("sparsity", -0.1, r"sparsity .* must be in \[0, 1\)"),
    ],
)
def test_invalid_config_values_name_the_file_and_the_field(tmp_path, load, field, value, message):
    mask_type = "hard" if field == "sparsity" else "soft"
    folder = save_adapter(get_peft_model(make_llama(), MFTConfig(mask_type=mask_type)), tmp_path / "adapter")
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config[field] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(str(config_file)) + ".*" + message):
        load(make_llama(), folder)


def test_a_lora_folder_is_not_an_mft_adapter(tmp_path):
    lora = get_peft_model(make_llama(), LoraConfig(target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(AdapterFileError, match=r"adapter_config\.json describes a 'LORA' adapter, not an MFT one"):
        load_adapter(make_llama(), tmp_path / "lora")


def test_folders_without_an_adapter_are_named(tmp_path):
    with pytest.raises(AdapterFileError, match="no such adapter folder"):
        load_adapter(make_llama(), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match=r"empty is not a PEFT adapter folder: it has no adapter_config\.json"):
        load_adapter(make_llama(), tmp_path / "empty")
    (tmp_path / "config-only").mkdir()
    MFTConfig().save_pretrained(tmp_path / "config-only")
    with pytest.raises(AdapterFileError, match=r"config-only has no adapter_model\.safetensors"):
        load_adapter(make_llama(), tmp_path / "config-only")
    assert isinstance(MFTConfig.from_pretrained(str(tmp_path / "config-only")), MFTConfig)  # a config alone reads


class _RunsCode:
    """Unpickling this calls `Path.touch` on `marker`: what a hostile .bin file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def bin_folder(saved, content) -> Path:
    folder, _ = saved
    (folder / "adapter_model.safetensors").unlink()
    torch.save(content, folder / "adapter_model.bin")
    return folder


@pytest.mark.parametrize("load", both_loaders())
def test_a_bin_file_holding_code_is_refused_without_running_it(saved, load, tmp_path):
    marker = tmp_path / "code-ran"
    folder = bin_folder(saved, {"base_model.model.x": _RunsCode(marker)})
    with pytest.raises(AdapterFileError, match=r"adapter_model\.bin holds objects other than tensors"):
        load(make_llama(), folder)
    assert not marker.exists()


@pytest.mark.parametrize("load", both_loaders())
def test_a_truncated_bin_file_is_named(saved, load):
    folder = bin_folder(saved, load_file(saved[0] / "adapter_model.safetensors"))
    data = (folder / "adapter_model.bin").read_bytes()
    (folder / "adapter_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match=r"adapter_model\.bin is not a complete torch\.save file"):
        load(make_llama(), folder)


def test_a_bin_adapter_for_another_base_model_names_module_and_shapes(tmp_path):
    trained_like(1).save_pretrained(tmp_path / "bin", safe_serialization=False)
    wider = make_llama(intermediate_size=24)
    with pytest.raises(AdapterFileError, match=r"gate_proj'?: \(32, 16\) in the adapter, \(24, 16\) here"):
        PeftModel.from_pretrained(wider, tmp_path / "bin")


def test_load_adapter_into_an_existing_peft_model(saved):
    folder, model = saved
    target = get_peft_model(make_llama(), MFTConfig())
    load_adapter(target, folder, adapter_name="loaded")
    target.set_adapter("loaded")
    assert torch.equal(logits(target), logits(model))


# ---- NaN / inf ---------------------------------------------------------------------------------------------------


def poisoned(value=float("nan")):
    model = trained_like(1)
    with torch.no_grad():
        first_layer(model).mft_scores["default"][0, 1] = value
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_scores_names_the_module(value):
    check_finite_scores(trained_like(1))
    with pytest.raises(NonFiniteScoresError, match=re.escape(repr(FIRST_MODULE)) + ".*NaN or inf"):
        check_finite_scores(poisoned(value))


def test_the_check_reads_the_local_partition_of_a_deepspeed_zero3_parameter():
    """Under ZeRO-3 a parameter's `.data` is empty between gathers and this process's share lives in `ds_tensor`."""
    model = trained_like(1)
    scores = first_layer(model).mft_scores["default"]
    partition = scores.detach().flatten()[:10].clone()
    scores.data = torch.empty(0)
    scores.ds_tensor = partition
    check_finite_scores(model)
    partition[3] = float("nan")
    with pytest.raises(NonFiniteScoresError, match=re.escape(repr(FIRST_MODULE))):
        check_finite_scores(model)


def test_saving_nan_scores_is_refused_and_the_previous_adapter_kept(saved):
    folder, model = saved
    with pytest.raises(NonFiniteScoresError, match=rf"save MFT adapter 'default'.*{re.escape(repr(FIRST_MODULE))}"):
        save_adapter(poisoned(), folder)
    with pytest.raises(NonFiniteScoresError, match=re.escape(repr(FIRST_MODULE))):
        poisoned().save_pretrained(folder / "plain")  # PEFT's own save_pretrained refuses too
    assert torch.equal(logits(load_adapter(make_llama(), folder)), logits(model))


@pytest.mark.parametrize("merge", ["merge_adapter", "merge_and_unload"])
def test_merging_nan_scores_is_always_refused_naming_the_module(merge):
    model = poisoned()
    weight = first_layer(model).get_base_layer().weight.clone()
    with pytest.raises(NonFiniteScoresError, match=rf"Cannot merge.*{re.escape(repr(FIRST_MODULE))}"):
        getattr(model, merge)()  # without safe_merge
    assert torch.equal(first_layer(model).get_base_layer().weight, weight) and not first_layer(model).merged


def test_merging_another_adapter_is_not_blocked_by_a_broken_inactive_one():
    model = poisoned()
    model.add_adapter("good", MFTConfig(init_weights=False))
    model.set_adapter("good")
    model.merge_adapter()
    assert first_layer(model).merged_adapters == ["good"]


class PoisonAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                first_layer(model).mft_scores["default"][0, 0] = float("nan")


def test_finite_scores_callback_stops_training_before_a_nan_checkpoint(tmp_path):
    model = get_peft_model(make_llama(), MFTConfig())
    dataset = [{"input_ids": row, "labels": row} for row in text_inputs(batch=8)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=1,
        report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = AtomicCheckpointTrainer(
        model=model, args=args, train_dataset=dataset, optimizers=(create_mft_optimizer(model), None),
        callbacks=[PoisonAtStep(2), FiniteScoresCallback()],
    )  # fmt: skip
    with pytest.raises(NonFiniteScoresError, match=rf"after step 2.*{re.escape(repr(FIRST_MODULE))}"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_finite_scores_callback_validates_its_interval():
    with pytest.raises(ValueError, match="every_n_steps"):
        FiniteScoresCallback(every_n_steps=0)


# ---- saturation warnings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(init_score=12.0, temperature=1.0), "starts saturated"),
        (dict(init_score=-12.0, temperature=1.0), "starts saturated"),
        (dict(init_score=0.0, temperature=0.001), "masks will jump between 0 and 1"),
        (dict(init_score=7.0, temperature=1000.0), "masks will barely move"),
    ],
)
def test_extreme_soft_mask_settings_warn(kwargs, message):
    with pytest.warns(UserWarning, match=message):
        MFTConfig(**kwargs)


@pytest.mark.parametrize("preset", sorted(MFT_PRESETS))
def test_paper_presets_and_hard_masks_do_not_warn(preset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MFTConfig.from_preset(preset)
        MFTConfig(mask_type="hard", init_score=30.0, temperature=1.0)


def test_the_saturation_warning_is_given_once_not_per_layer():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(make_llama(), MFTConfig(init_score=12.0, temperature=1.0))
    assert sum("starts saturated" in str(w.message) for w in caught) == 1
