# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""TensorMemory: the peak of live tensor bytes in a training step, by category, against the analytic budget."""

import pytest
import torch
from peft import get_peft_model
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from transformers import Trainer, TrainingArguments

from harness.tensor_memory import CATEGORIES, TensorMemory, TensorMemoryCallback
from peft_mft import MFTConfig, OptimizerInBackward, create_mft_optimizer


WIDTH, DEPTH, BATCH = 256, 3, 2  # weights dominate: 3 x 256 x 256 floats against 2 x 256 activations per layer


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(DEPTH)])


def _measured_step(model, optimizer):
    x = torch.randn(BATCH, WIDTH)
    for _ in range(2):  # the second step: optimizer state exists, as in a long run
        with TensorMemory(model, optimizer) as memory:
            model(x).square().mean().backward()
            optimizer.step()
        result = memory.peak_by_category()
        optimizer.zero_grad(set_to_none=True)
    return result


def test_full_fine_tuning_holds_weights_gradients_and_two_adam_moments():
    model = _mlp()
    result = _measured_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    weights = DEPTH * WIDTH * WIDTH * 4
    assert result["trainable"] == weights and result["frozen_weights"] == 0
    assert result["gradients"] == weights  # all alive while the optimizer steps
    assert 2 * weights <= result["optimizer_state"] <= 2 * weights + DEPTH * 8  # exp_avg, exp_avg_sq (+ step)
    assert result["peak"] == sum(result[c] for c in CATEGORIES)
    # the rest is AdamW's own temporary (the foreach update's sqrt(v) + eps for every parameter, one weight's worth)
    # plus the tiny activations: the peak is in optimizer.step(), not in the forward
    assert weights <= result["activations_and_temporaries"] < 1.05 * weights


def test_mft_splits_frozen_weights_from_scores():
    model = get_peft_model(_mlp(), MFTConfig(target_modules=["0", "1", "2"], init_score=3.0, temperature=0.5))
    result = _measured_step(model, create_mft_optimizer(model))
    weights = DEPTH * WIDTH * WIDTH * 4
    assert result["frozen_weights"] == weights and result["trainable"] == weights
    assert 2 * weights <= result["optimizer_state"] <= 2 * weights + DEPTH * 8


def test_gradients_freed_in_the_backward_still_count_as_gradients():
    model = _mlp()
    plain = _measured_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    model = _mlp()
    in_backward = _measured_step(model, OptimizerInBackward(torch.optim.AdamW(model.parameters(), lr=1e-3)))
    assert 0 < in_backward["gradients"] < plain["gradients"]  # never all at once
    assert in_backward["peak"] < plain["peak"]


class _Regression(nn.Module):
    """The MLP as a Trainer model: a dict batch in, {"loss"} out."""

    def __init__(self):
        super().__init__()
        self.mlp = _mlp()

    def forward(self, x):
        return {"loss": self.mlp(x).square().mean()}


@pytest.mark.parametrize("max_steps", [1, 3])
def test_callback_measures_one_trainer_step(tmp_path, max_steps):
    model = _Regression()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    callback = TensorMemoryCallback(model, optimizer)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=BATCH,
                             use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    data = [{"x": torch.randn(WIDTH)} for _ in range(8)]
    Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None), callbacks=[callback]).train()
    result = callback.by_category
    weights = DEPTH * WIDTH * WIDTH * 4
    assert result["trainable"] == weights and result["gradients"] == weights
    assert 2 * weights <= result["optimizer_state"] <= 2 * weights + DEPTH * 8
    assert result["peak"] == sum(result[c] for c in CATEGORIES)
    assert not any(isinstance(mode, TensorMemory) for mode in _get_current_dispatch_mode_stack())  # it exited


def test_callback_counts_steps_from_one():
    with pytest.raises(ValueError, match="from 1, got 0"):
        TensorMemoryCallback(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), step=0)
