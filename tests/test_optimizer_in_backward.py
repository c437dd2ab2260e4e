# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""OptimizerInBackward: the same updates as the optimizer it wraps, gradients freed in the backward, LR schedules."""

import pytest
import torch

from peft_mft import OptimizerInBackward


@pytest.mark.parametrize("optimizer_cls, kwargs", [(torch.optim.AdamW, {}), (torch.optim.SGD, {"momentum": 0.9})])
def test_step_in_backward_updates_like_the_plain_optimizer_and_frees_gradients(optimizer_cls, kwargs):
    torch.manual_seed(0)
    plain, fused = torch.nn.Linear(12, 8), torch.nn.Linear(12, 8)
    fused.load_state_dict(plain.state_dict())

    def groups(layer):
        return [{"params": [layer.weight], "lr": 0.1, "weight_decay": 0.0}, {"params": [layer.bias], "lr": 0.01}]

    plain_optimizer = optimizer_cls(groups(plain), lr=0.1, **kwargs)
    fused_optimizer = OptimizerInBackward(optimizer_cls(groups(fused), lr=0.1, **kwargs))
    x = torch.randn(4, 12)
    for _ in range(3):
        plain(x).pow(2).sum().backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad()
        fused(x).pow(2).sum().backward()
        assert fused.weight.grad is None and fused.bias.grad is None
        fused_optimizer.step()
    assert torch.equal(fused.weight, plain.weight) and torch.equal(fused.bias, plain.bias)
    assert len(fused_optimizer.state) == 2 and [g["lr"] for g in fused_optimizer.param_groups] == [0.1, 0.01]


def test_step_in_backward_follows_an_lr_scheduler():
    torch.manual_seed(0)
    plain, fused = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    fused.load_state_dict(plain.state_dict())
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=0.1)
    fused_optimizer = OptimizerInBackward(torch.optim.AdamW(fused.parameters(), lr=0.1))
    halve = lambda step: 0.5 ** step  # noqa: E731
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, halve) for o in (plain_optimizer, fused_optimizer)]
    x = torch.randn(4, 6)
    for _ in range(3):
        for layer, optimizer in ((plain, plain_optimizer), (fused, fused_optimizer)):
            layer(x).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        for scheduler in schedulers:
            scheduler.step()
    assert [o.param_groups[0]["lr"] for o in fused_optimizer.optimizers.values()] == [0.1 / 8] * 2
    assert torch.equal(fused.weight, plain.weight) and torch.equal(fused.bias, plain.bias)


def test_trainer_with_optimizer_in_backward_matches_the_plain_optimizer_without_clipping(tmp_path):
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    from peft_mft import MFTConfig, create_mft_optimizer

    from .conftest import make_llama, text_inputs

    dataset = [{"input_ids": row, "labels": row} for row in text_inputs(batch=8)]
    scores = {}
    for fused in (False, True):
        model = get_peft_model(make_llama(), MFTConfig(init_score=7.0, temperature=2.3))
        optimizer = create_mft_optimizer(model, lr=0.1)
        optimizer = OptimizerInBackward(optimizer) if fused else optimizer
        args = TrainingArguments(
            output_dir=str(tmp_path / str(fused)), per_device_train_batch_size=4, max_steps=3, report_to=[],
            use_cpu=True, save_strategy="no", disable_tqdm=True, max_grad_norm=0.0, lr_scheduler_type="linear",
            data_seed=0, seed=0,
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, None)).train()
        scores[fused] = [p.detach().clone() for n, p in model.named_parameters() if "mft_scores" in n]
        if fused:
            assert all(p.grad is None for n, p in model.named_parameters() if "mft_scores" in n)
            assert {g["lr"] for g in optimizer.param_groups} == {0.0}  # the linear schedule reached its end
    assert any(not torch.equal(s, torch.full_like(s, 7.0)) for s in scores[True])
    for plain, fused in zip(scores[False], scores[True]):
        torch.testing.assert_close(fused, plain, rtol=0, atol=1e-6)


def test_state_dict_round_trip_restores_every_parameter_state_and_refuses_a_mismatch():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    optimizer = OptimizerInBackward(torch.optim.AdamW(layer.parameters(), lr=0.1))
    layer(torch.randn(2, 5)).sum().backward()
    saved = optimizer.state_dict()
    clone = torch.nn.Linear(5, 3)
    restored = OptimizerInBackward(torch.optim.AdamW(clone.parameters(), lr=0.1))
    restored.load_state_dict(saved)
    for param, clone_param in zip(layer.parameters(), clone.parameters()):
        assert torch.equal(optimizer.state[param]["exp_avg"], restored.state[clone_param]["exp_avg"])
    restored.param_groups[0]["lr"] = 0.5  # groups stay live after loading
    assert restored.optimizers[clone.weight].param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="holds 2 per-parameter states, this optimizer has 1 parameters"):
        OptimizerInBackward(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])).load_state_dict(saved)


def test_a_second_backward_without_step_is_refused_before_any_second_update():
    layer = torch.nn.Linear(6, 3)
    optimizer = OptimizerInBackward(torch.optim.SGD(layer.parameters(), lr=0.1))
    x = torch.randn(4, 6)
    layer(x).pow(2).sum().backward()
    after_first = [p.detach().clone() for p in layer.parameters()]
    with pytest.raises(RuntimeError, match="gradient accumulation"):
        layer(x).pow(2).sum().backward()
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), after_first))
    optimizer.step()  # ends the optimizer step: the next backward updates again
    layer(x).pow(2).sum().backward()
    assert not torch.equal(layer.weight, after_first[0])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"max_grad_norm": 1.0}, r"max_grad_norm=1\.0 \(clipping"),
        ({"max_grad_norm": 0.0, "gradient_accumulation_steps": 2}, "gradient_accumulation_steps=2"),
    ],
)
def test_trainer_asking_for_clipping_or_accumulation_is_refused_before_training(tmp_path, arguments, message):
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    from peft_mft import MFTConfig, create_mft_optimizer

    from .conftest import make_llama, text_inputs

    model = get_peft_model(make_llama(), MFTConfig(init_score=7.0, temperature=2.3))
    optimizer = OptimizerInBackward(create_mft_optimizer(model, lr=0.1))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, **arguments)
    dataset = [{"input_ids": row, "labels": row} for row in text_inputs(batch=8)]
    with pytest.raises(ValueError, match=message):
        Trainer(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, None)).train()
    # nothing was updated: the trained tensor of a fresh soft adapter is 0
    assert all(torch.equal(p, torch.zeros_like(p)) for p in optimizer.optimizers)
