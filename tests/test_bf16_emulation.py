# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Emulated bf16 kernels (`harness.precision.EmulatedBF16`): torch's kernels below them see fp32 operands only, and
the results match torch's own bf16 kernels to the last bit but for the order of fp32 sums."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harness import precision
from harness.precision import EmulatedBF16
from peft_mft.mask import MaskSpec, masked_linear


# the matrix products torch runs forward and backward for the cases below, named as the dispatcher names them
PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "convolution", "convolution_backward"}


class ProductOperands(TorchDispatchMode):
    """Records the dtypes of the floating operands each matrix product receives."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, set[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in PRODUCTS:
            dtypes = {t.dtype for t in tree_flatten((args, kwargs))[0]
                      if isinstance(t, torch.Tensor) and t.is_floating_point()}
            self.seen.append((name, dtypes))
        return func(*args, **(kwargs or {}))


def _generator():
    return torch.Generator().manual_seed(0)


def _linear():
    x = torch.randn(64, 96, generator=_generator(), requires_grad=True)
    weight = torch.randn(48, 96, generator=_generator())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.linear(x, weight)
    out.float().square().sum().backward()
    return out, x.grad


def _masked_linear():
    x = torch.randn(64, 96, generator=_generator(), requires_grad=True)
    weight = torch.randn(48, 96, generator=_generator()) * 0.1
    scores = torch.full((48, 96), 3.0, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_linear(x, weight, scores, None, MaskSpec("soft", temperature=0.5))
    out.float().square().sum().backward()
    return out, x.grad, scores.grad


def _attention():
    q = torch.randn(2, 3, 40, 16, generator=_generator(), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.scaled_dot_product_attention(q, q * 0.5, q.flip(2), is_causal=True)
    out.float().square().sum().backward()
    return out, q.grad


def _convolution_inputs():
    return (torch.randn(2, 8, 12, 12, generator=_generator(), requires_grad=True),
            torch.randn(16, 8, 3, 3, generator=_generator()))


def _convolution():
    x, weight = _convolution_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.conv2d(x, weight, padding=1)
    out.float().square().sum().backward()
    return out, x.grad


def _batched():
    a = torch.randn(4, 32, 64, generator=_generator()).bfloat16()
    return (torch.bmm(a, a.transpose(1, 2)),)


# the convolution's input gradient is checked against exact arithmetic below instead: torch's AVX2 bf16 convolution
# backward rounds more than fp32 accumulation does (its error from exact was twice the emulation's when measured)
CASES = {"linear": _linear, "masked_linear": _masked_linear, "convolution": lambda: _convolution()[:1],
         "bmm": _batched}


def _within_bf16_rounding(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Every element within one bf16 spacing, and at least 99% bit-equal (sums in another order)."""
    apart = (got.float() - expected.float()).abs()
    one_spacing = torch.finfo(torch.bfloat16).eps * torch.maximum(got.float().abs(), expected.float().abs())
    return bool((apart <= one_spacing).all() and (apart == 0).float().mean() >= 0.99)


@pytest.mark.parametrize("case", list(CASES))
def test_products_below_the_emulation_get_fp32_operands_and_round_like_native_kernels(case):
    native = CASES[case]()
    below = ProductOperands()
    with below, EmulatedBF16():  # the emulation on top: `below` sees what it passes on to torch's kernels
        emulated = CASES[case]()
    assert below.seen, "no matrix product reached torch's kernels"
    assert all(torch.bfloat16 not in dtypes for _, dtypes in below.seen), below.seen
    for got, expected in zip(emulated, native):
        assert got.dtype == expected.dtype and _within_bf16_rounding(got, expected)


def test_convolution_input_gradient_is_exact_arithmetic_rounded_to_bf16():
    with EmulatedBF16():
        out, grad = _convolution()
    x, weight = _convolution_inputs()
    # autocast hands the convolution's backward the upstream gradient 2·out in bf16, and rounds its result to bf16
    upstream = (2 * out.float()).bfloat16().double()
    exact = torch.nn.grad.conv2d_input(x.shape, weight.bfloat16().double(), upstream, padding=1)
    assert grad.dtype == torch.float32 and _within_bf16_rounding(grad, exact.bfloat16())


def test_attention_runs_torch_own_bf16_kernel():
    # it also rounds the softmax weights to bf16, which an fp32 stand-in would not (harness.precision)
    native = _attention()
    with EmulatedBF16():
        emulated = _attention()
    assert all(torch.equal(a, b) for a, b in zip(native, emulated))


def test_outside_the_emulation_torch_kernels_run_as_before():
    before = _linear()
    with EmulatedBF16():
        _linear()
    after = _linear()
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    below = ProductOperands()
    with below:
        _linear()
    assert any(torch.bfloat16 in dtypes for _, dtypes in below.seen)


@pytest.mark.parametrize("native", [True, False])
def test_fast_bf16_emulates_only_where_the_kernels_are_not_native(monkeypatch, native):
    monkeypatch.setattr(precision, "bf16_is_native", lambda: native)
    assert precision.bf16_kernels() == ("native" if native else "emulated")
    assert isinstance(precision.fast_bf16(), EmulatedBF16) is not native


def test_tensor_memory_inside_the_emulation_counts_what_native_kernels_would():
    # the emulation's fp32 copies live only inside one op, below the memory count (a later, inner mode): a run's
    # tensor-memory figure stays that of native bf16 kernels
    from harness.tensor_memory import TensorMemory

    layer = torch.nn.Linear(256, 512)

    def peak():
        x = torch.randn(128, 256, generator=_generator(), requires_grad=True)
        with TensorMemory(layer) as memory, torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x).float().square().sum().backward()
        layer.zero_grad(set_to_none=True)
        return memory.peak

    native = peak()
    with EmulatedBF16():
        emulated = peak()
    assert emulated == native
