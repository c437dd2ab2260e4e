# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Exact resume: a `Trainer` run interrupted after a checkpoint and resumed from it ends bit-identical (CPU) to an
uninterrupted run: scores, optimizer state, learning-rate schedule and RNG streams (dropout, data order)."""

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from peft_mft import MFTConfig, create_mft_optimizer
from peft_mft.training.trainer import AtomicCheckpointTrainer

from .conftest import _text_config_kwargs, text_inputs


TOTAL_STEPS, CHECKPOINT_STEP = 4, 2


class Crash(RuntimeError):
    pass


class CrashAfterStep(TrainerCallback):
    """Simulates a process killed right after step `step` (and its checkpoint) finished."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"interrupted after step {self.step}")


def make_model():
    torch.manual_seed(0)
    # Dropout makes the result depend on the RNG stream, so restoring RNG state is tested too.
    base = LlamaForCausalLM(LlamaConfig(**_text_config_kwargs(), attention_dropout=0.3))
    return get_peft_model(base, MFTConfig(init_weights=False))


def make_trainer(trainer_cls, model, output_dir, callbacks=()):
    dataset = [{"input_ids": row, "labels": row} for row in text_inputs(batch=16, seed=1)]
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=TOTAL_STEPS, save_strategy="steps", save_steps=CHECKPOINT_STEP, lr_scheduler_type="linear",
        warmup_steps=1, learning_rate=0.1, seed=7, data_seed=7, report_to=[], use_cpu=True, disable_tqdm=True,
        logging_steps=1, dataloader_num_workers=0,
    )  # fmt: skip
    optimizer = create_mft_optimizer(model, lr=0.1)
    return trainer_cls(
        model=model, args=args, train_dataset=dataset, optimizers=(optimizer, None), callbacks=list(callbacks)
    )


def final_state(trainer):
    scores = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    return scores, trainer.optimizer.state_dict(), trainer.lr_scheduler.state_dict(), torch.get_rng_state()


def assert_same_optimizer_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        for name, value in a["state"][key].items():
            assert torch.equal(value, b["state"][key][name]), (key, name)


@pytest.mark.parametrize("trainer_cls", [Trainer, AtomicCheckpointTrainer])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, trainer_cls):
    uninterrupted = make_trainer(trainer_cls, make_model(), tmp_path / "uninterrupted")
    uninterrupted.train()
    expected = final_state(uninterrupted)

    run_dir = tmp_path / "interrupted"
    with pytest.raises(Crash):
        make_trainer(trainer_cls, make_model(), run_dir, [CrashAfterStep(CHECKPOINT_STEP)]).train()
    assert sorted(p.name for p in run_dir.iterdir()) == [f"checkpoint-{CHECKPOINT_STEP}"]

    torch.manual_seed(12345)  # a fresh process starts from another RNG state; resuming must restore it
    resumed = make_trainer(trainer_cls, make_model(), run_dir)
    resumed.train(resume_from_checkpoint=True)
    scores, optimizer_state, scheduler_state, rng_state = final_state(resumed)

    assert scores.keys() == expected[0].keys()
    assert all(torch.equal(scores[name], expected[0][name]) for name in scores)
    assert any(not torch.equal(scores[name], make_model().state_dict()[name]) for name in scores)  # it trained
    assert_same_optimizer_state(optimizer_state, expected[1])
    assert scheduler_state == expected[2]
    assert torch.equal(rng_state, expected[3])
    assert resumed.state.global_step == TOTAL_STEPS
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (resumed, uninterrupted)]
    assert losses[0] == losses[1] and len(losses[0]) == TOTAL_STEPS
