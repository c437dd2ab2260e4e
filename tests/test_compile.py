# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`torch.compile` compatibility: the masked linear traces into one graph, and a compiled MFT model trains like
eager."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from peft_mft import MFTConfig, create_mft_optimizer
from peft_mft.mask import MaskSpec, masked_linear, masked_weight_reference

from .conftest import make_llama, text_inputs


SPECS = {
    "soft": MaskSpec("soft", temperature=1.3, normalizer=0.9),
    "soft-ste": MaskSpec("soft", temperature=1.3, straight_through=True),
    "hard": MaskSpec("hard", sparsity=0.3),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _layer_inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 24, generator=gen).requires_grad_()
    weight = torch.randn(16, 24, generator=gen)
    # ties at the hard threshold: the compiled path breaks them by index like eager
    scores = (torch.randint(-4, 5, (16, 24), generator=gen).float() / 2 + 1).requires_grad_()
    bias = torch.randn(16, generator=gen).requires_grad_()
    return x, weight, scores, bias


def _check_compiled_layer(spec, backend):
    x, weight, scores, bias = _layer_inputs()
    compiled = torch.compile(lambda x, s, b: masked_linear(x, weight, s, b, spec), backend=backend, fullgraph=True)
    out = compiled(x, scores, bias)
    ref = F.linear(x, masked_weight_reference(weight, scores, spec), bias)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, scores, bias), grad_out)
    ref_grads = torch.autograd.grad(ref, (x, scores, bias), grad_out)
    torch.testing.assert_close(out, ref)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("name", list(SPECS))
def test_masked_linear_traces_into_one_graph_and_matches_eager(name):
    _check_compiled_layer(SPECS[name], backend="aot_eager")


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None, reason="inductor needs a C++ compiler"
)
def test_masked_linear_compiled_by_inductor_matches_eager():
    _check_compiled_layer(SPECS["soft"], backend="inductor")


def _train(model, steps=3):
    inputs = text_inputs()
    optimizer = create_mft_optimizer(model)  # the default score step, 0.1 for soft masks
    losses = []
    for _ in range(steps):
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.parametrize("mask_type", ["soft", "hard"])
def test_compiled_mft_model_trains_and_matches_eager(mask_type):
    soft = dict(init_score=7.0, temperature=2.3) if mask_type == "soft" else {}
    config = MFTConfig(mask_type=mask_type, sparsity=0.1 if mask_type == "hard" else None, init_weights=False, **soft)
    eager = get_peft_model(make_llama(num_hidden_layers=1), config)
    compiled = get_peft_model(make_llama(num_hidden_layers=1), config)
    compiled.load_state_dict(eager.state_dict())
    initial = {name: param.detach().clone() for name, param in eager.named_parameters() if param.requires_grad}
    eager.train(), compiled.train()
    eager_losses = _train(eager)
    compiled_losses = _train(torch.compile(compiled, backend="aot_eager"))
    torch.testing.assert_close(compiled_losses, eager_losses)
    trained = dict(compiled.named_parameters())
    for name, param in eager.named_parameters():
        if name in initial:
            torch.testing.assert_close(trained[name], param, msg=name)
    assert all(not torch.equal(trained[name], before) for name, before in initial.items())
