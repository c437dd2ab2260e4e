# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""H-MFT scores start at |W| / mean |W| / score_scale per matrix and train at a score step of DEFAULT_HARD_SCORE_STEP:
the ranking by |S| survives a step and a few steps lower the training loss."""

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from peft_mft import MFTConfig, create_mft_optimizer
from peft_mft.config import DEFAULT_HARD_SCORE_SCALE, DEFAULT_SOFT_SCORE_SCALE
from peft_mft.layer import MFTLayer
from peft_mft.mask import MaskSpec, masked_linear, masked_weight_reference
from peft_mft.training.optim import DEFAULT_HARD_SCORE_STEP, DEFAULT_SCORE_STEP
from tests.conftest import _text_config_kwargs, make_llama, text_inputs


def _hard_model(sparsity=0.3):
    # Weights of std 0.2 rather than the usual 0.02, so that the tiny model's logits depend on which ones are zeroed
    # (at 0.02 its output is near uniform whatever the mask).
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**_text_config_kwargs(), initializer_range=0.2))
    return get_peft_model(base, MFTConfig(mask_type="hard", sparsity=sparsity, targets="both"))


def _loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def test_hard_scores_start_at_unit_mean_and_zero_the_smallest_weights():
    sparsity = 0.3
    model = _hard_model(sparsity)
    for module in (m for m in model.modules() if isinstance(m, MFTLayer)):
        assert abs(module.mft_scores["default"].mean().item() * DEFAULT_HARD_SCORE_SCALE - 1.0) < 1e-5
        weight = module.get_base_layer().weight.detach().abs().flatten()
        smallest = torch.zeros_like(weight, dtype=torch.bool)
        smallest[weight.topk(int(sparsity * weight.numel()), largest=False).indices] = True
        assert torch.equal(module.get_mask("default").flatten() == 0, smallest)


def test_the_optimizer_gives_hard_and_soft_scores_their_own_default_rates():
    model = _hard_model()
    (group,) = create_mft_optimizer(model).param_groups
    assert group["lr"] == DEFAULT_HARD_SCORE_STEP / DEFAULT_HARD_SCORE_SCALE == 0.01 / 256
    soft = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=0.5))
    soft_lr = create_mft_optimizer(soft).param_groups[0]["lr"]
    assert soft_lr == DEFAULT_SCORE_STEP / DEFAULT_SOFT_SCORE_SCALE == 0.1 / 4096
    assert create_mft_optimizer(model, lr=0.5).param_groups[0]["lr"] == 0.5


def test_most_score_signs_and_the_zeroed_set_survive_one_default_step():
    model = _hard_model()
    ids = text_inputs(batch=4, length=12)
    layers = [m for m in model.modules() if isinstance(m, MFTLayer)]
    before = [m.mft_scores["default"].detach().clone() for m in layers]
    zeroed_before = [m.get_mask("default") == 0 for m in layers]
    optimizer = create_mft_optimizer(model)
    _loss(model, ids).backward()
    optimizer.step()
    after = [m.mft_scores["default"].detach() for m in layers]
    flipped = sum((torch.sign(a) != torch.sign(b)).sum().item() for a, b in zip(after, before))
    total = sum(b.numel() for b in before)
    assert flipped / total < 0.05
    kept = sum((z & (m.get_mask("default") == 0)).sum().item() for z, m in zip(zeroed_before, layers))
    assert kept / sum(z.sum().item() for z in zeroed_before) > 0.8


def test_a_few_hard_mask_steps_lower_the_training_loss():
    model = _hard_model()
    model.train()
    ids = text_inputs(batch=8, length=12)
    optimizer = create_mft_optimizer(model)
    with torch.no_grad():
        start = _loss(model, ids).item()
    for _ in range(10):
        optimizer.zero_grad()
        _loss(model, ids).backward()
        optimizer.step()
    with torch.no_grad():
        end = _loss(model, ids).item()
    assert end < start - 0.05, (start, end)


@pytest.mark.parametrize("fused", [True, False])
def test_a_step_moves_a_negative_score_away_from_zero_when_the_loss_wants_its_weight_kept(fused):
    # y = x (W * M)^T with W = x = 1: a lower loss -y wants every weight kept, so every |S| must grow, whatever the
    # sign of S (the mask ranks |S|); a gradient of 1 instead of sign(S) would push the negative score towards 0.
    spec = MaskSpec("hard", sparsity=0.25)
    scores = torch.tensor([[0.5, -0.5, 1.0, -1.0]], requires_grad=True)
    x, weight = torch.ones(1, 4), torch.ones(1, 4)
    if fused:
        y = masked_linear(x, weight, scores, None, spec)
    else:
        y = x @ masked_weight_reference(weight, scores, spec).T
    (-y.sum()).backward()
    with torch.no_grad():
        stepped = scores - 0.1 * scores.grad
    assert torch.all(stepped.abs() > scores.abs())
