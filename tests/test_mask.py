# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The mask maths and the masked-linear autograd Function, alone (no PEFT)."""

import math

import pytest
import torch
import torch.nn.functional as F

from peft_mft.mask import MaskSpec, hard_mask_threshold, masked_linear, masked_weight_reference, num_zeroed


SPECS = {
    "soft": MaskSpec("soft", temperature=1.3, normalizer=0.9),
    "soft-ste": MaskSpec("soft", temperature=1.3, straight_through=True),
    "hard": MaskSpec("hard", sparsity=0.3),
}


def _inputs(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, dtype=dtype, generator=gen).requires_grad_()
    weight = torch.randn(4, 5, dtype=dtype, generator=gen)
    scores = (torch.randn(4, 5, dtype=dtype, generator=gen) * 2 + 1).requires_grad_()
    bias = torch.randn(4, dtype=dtype, generator=gen).requires_grad_()
    return x, weight, scores, bias


def test_soft_mask_gradients_pass_gradcheck_in_float64():
    x, weight, scores, bias = _inputs()
    spec = SPECS["soft"]
    assert torch.autograd.gradcheck(lambda x, s, b: masked_linear(x, weight, s, b, spec), (x, scores, bias))


@pytest.mark.parametrize("name", list(SPECS))
def test_fused_function_matches_plain_autograd_reference(name):
    spec = SPECS[name]
    x, weight, scores, bias = _inputs()
    out = masked_linear(x, weight, scores, bias, spec)
    ref = F.linear(x, masked_weight_reference(weight, scores, spec), bias)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, scores, bias), grad_out)
    ref_grads = torch.autograd.grad(ref, (x, scores, bias), grad_out)
    torch.testing.assert_close(out, ref)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad)


def test_straight_through_score_gradient_is_grad_of_masked_weight_times_weight_and_for_hard_masks_sign_s():
    x, weight, scores, _ = _inputs()
    assert (scores < 0).any() and (scores > 0).any()
    for spec, through in ((SPECS["soft-ste"], 1.0), (SPECS["hard"], scores.detach().sign())):
        out = masked_linear(x, weight, scores, None, spec)
        (grad_scores,) = torch.autograd.grad(out.sum(), scores)
        grad_masked_weight = torch.ones(2 * 3, 4, dtype=x.dtype).T @ x.detach().reshape(-1, 5)
        torch.testing.assert_close(grad_scores, grad_masked_weight * weight * through)


def test_frozen_weight_gets_gradient_only_if_it_requires_grad():
    x, weight, scores, bias = _inputs()
    weight.requires_grad_()
    out = masked_linear(x, weight, scores, bias, SPECS["soft"])
    ref = F.linear(x, masked_weight_reference(weight, scores, SPECS["soft"]), bias)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), weight)[0], torch.autograd.grad(ref.sum(), weight)[0])


def test_weight_callable_is_called_again_in_backward_instead_of_kept():
    x, weight, scores, bias = _inputs()
    calls = []

    def dequantize():
        calls.append(1)
        return weight

    out = masked_linear(x, dequantize, scores, bias, SPECS["soft"])
    out.sum().backward()
    ref = F.linear(x, masked_weight_reference(weight, scores, SPECS["soft"]), bias)
    torch.testing.assert_close(out, ref)
    assert len(calls) == 2


def test_no_tensor_of_weight_size_is_saved_besides_weight_and_scores():
    x, weight, scores, bias = _inputs(dtype=torch.float32)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        masked_linear(x, weight, scores, bias, SPECS["soft"])
    big = [t for t in saved if t.shape == weight.shape]
    assert all(t is weight or t is scores for t in big), [t.shape for t in saved]


# (sparsity, shape, entries zeroed), counted by hand: floor of the decimal sparsity times numel (851 = 37 x 23).
HAND_COUNTS = [
    (0.0, (37, 23), 0),
    (0.01, (37, 23), 8),  # 8.51
    (0.1, (37, 23), 85),  # 85.1
    (0.29, (10, 10), 29),  # float: 0.29 * 100 = 28.999999999999996
    (0.29, (37, 23), 246),  # 246.79
    (0.5, (37, 23), 425),  # 425.5
    (0.57, (10, 10), 57),  # float: 0.57 * 100 = 56.99999999999999
    (0.007, (100, 1000), 700),  # '0.7%'
    (0.999, (37, 23), 850),  # 850.149
]


@pytest.mark.parametrize("sparsity, shape, zeroed", HAND_COUNTS)
def test_hard_mask_zeroes_exactly_floor_sparsity_times_numel(sparsity, shape, zeroed):
    scores = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    mask = MaskSpec("hard", sparsity=sparsity).mask(scores)
    assert num_zeroed(scores.numel(), sparsity) == zeroed
    assert int((mask == 0).sum()) == zeroed
    if zeroed:
        assert scores.abs()[mask == 0].max() <= scores.abs()[mask == 1].min()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_hard_mask_refuses_nan_and_inf_scores_before_ranking(bad):
    scores = torch.randn(20, 20)
    scores[3, :2] = bad
    with pytest.raises(ValueError, match=r"shape \(20, 20\).* 2 of 400 are NaN or inf"):
        MaskSpec("hard", sparsity=0.1).mask(scores)


def test_hard_mask_ties_zero_lowest_flat_index_first():
    scores = torch.tensor([[0.5, -0.1, 0.1], [0.1, 0.2, -0.1]])
    mask = MaskSpec("hard", sparsity=0.5).mask(scores)  # 3 zeroed among four tied |S| = 0.1
    assert mask.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    constant = MaskSpec("hard", sparsity=0.25).mask(torch.full((2, 4), 3.0))
    assert constant.flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_hard_mask_threshold_is_none_when_nothing_is_zeroed():
    assert hard_mask_threshold(torch.randn(3, 3), 0.1) is None  # floor(0.9) == 0


def test_soft_mask_values_and_normalisation():
    spec = MaskSpec("soft", temperature=2.3)
    assert spec.mask(torch.tensor([7.0])).item() == pytest.approx(1 / (1 + math.exp(-7.0 / 2.3)), rel=1e-6)
    assert round(spec.mask(torch.tensor([7.0])).item(), 3) == 0.955  # the paper rounds it to 0.954 (docs/method.md)
    init = torch.tensor(7.0)
    normalizer = torch.sigmoid(init / 2.3).item()
    assert MaskSpec("soft", temperature=2.3, normalizer=normalizer).mask(torch.full((3, 3), 7.0)).eq(1.0).all()


def _float64_reference(x, weight, scores, bias, spec, grad_out):
    """Output and (x, scores, bias) gradients of the plain autograd formula in float64: the exact values that a
    low-precision run approximates."""
    x64, s64, b64 = (t.detach().double().requires_grad_() for t in (x, scores, bias))
    out = F.linear(x64, masked_weight_reference(weight.double(), s64, spec), b64)
    grads = torch.autograd.grad(out, (x64, s64, b64), grad_out.double())
    return out, grads


def _assert_within_roundoff(got, exact, dtype, terms: int):
    """|got - exact| <= (terms + 4) eps(dtype) max|exact|: a sum of `terms` products whose inputs are rounded once
    to `dtype` (standard floating-point error analysis), measured against the largest exact value."""
    bound = (terms + 4) * torch.finfo(dtype).eps * exact.abs().max().item()
    error = (got.double() - exact).abs().max().item()
    assert error <= bound, f"error {error:.3g} > bound {bound:.3g} ({dtype})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weight_with_float32_scores(dtype):
    x, weight, scores, bias = _inputs(dtype=torch.float32)
    x_low = x.detach().to(dtype).requires_grad_()
    scores = scores.detach().requires_grad_()
    bias_low = bias.detach().to(dtype).requires_grad_()
    out = masked_linear(x_low, weight.to(dtype), scores, bias_low, SPECS["soft"])
    assert out.dtype == dtype
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad_out.to(dtype))
    assert scores.grad.dtype == torch.float32 and x_low.grad.dtype == dtype
    exact, (grad_x, grad_scores, _) = _float64_reference(
        x_low, weight.to(dtype), scores, bias_low, SPECS["soft"], grad_out
    )
    _assert_within_roundoff(out, exact, dtype, terms=weight.shape[1])
    _assert_within_roundoff(x_low.grad, grad_x, dtype, terms=weight.shape[0])
    _assert_within_roundoff(scores.grad, grad_scores, dtype, terms=x.shape[0] * x.shape[1])


@pytest.mark.parametrize("name", list(SPECS))
def test_autocast_forward_and_backward_match_float64_within_bf16_roundoff(name):
    spec = SPECS[name]
    x, weight, scores, bias = _inputs(dtype=torch.float32)
    x, scores, bias = (t.detach().requires_grad_() for t in (x, scores, bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_linear(x, weight, scores, bias, spec)
    assert out.dtype == torch.bfloat16
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad_out.to(torch.bfloat16))
    assert scores.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    exact, (grad_x, grad_scores, grad_bias) = _float64_reference(x, weight, scores, bias, spec, grad_out)
    _assert_within_roundoff(out, exact, torch.bfloat16, terms=weight.shape[1])
    _assert_within_roundoff(x.grad, grad_x, torch.bfloat16, terms=weight.shape[0])
    _assert_within_roundoff(scores.grad, grad_scores, torch.bfloat16, terms=x.shape[0] * x.shape[1])
    _assert_within_roundoff(bias.grad, grad_bias, torch.bfloat16, terms=x.shape[0] * x.shape[1])


def _sort_based_hard_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Reference: a stable sort of |S| (ties keep row-major order); the first floor(sparsity * numel) are zeroed."""
    order = torch.sort(scores.abs().flatten(), stable=True).indices
    mask = torch.ones(scores.numel(), dtype=scores.dtype)
    mask[order[: num_zeroed(scores.numel(), sparsity)]] = 0.0
    return mask.view_as(scores)


LARGE_SCORES = {  # more than 2**16 entries, so the CPU selection goes through its sampled bound
    "continuous": lambda gen: torch.randn(300, 257, generator=gen),
    "quantized (many ties)": lambda gen: torch.randint(-8, 9, (300, 257), generator=gen).float() / 8,
    "row-structured": lambda gen: torch.randn(300, 257, generator=gen) * torch.arange(1, 258).float(),
    "sorted": lambda gen: torch.linspace(-1, 1, 300 * 257).view(300, 257),
    # the smallest entries sit exactly where a strided sample looks: its bound is too low and the full selection runs
    "sample-adversarial": lambda gen: (
        (torch.rand(300 * 257, generator=gen) + 1).index_fill(0, torch.arange(0, 300 * 257, 61), 1e-3).view(300, 257)
    ),
}


@pytest.mark.parametrize("kind", list(LARGE_SCORES))
@pytest.mark.parametrize("sparsity", [0.0005, 0.01, 0.3])
def test_hard_mask_on_large_matrices_matches_a_stable_sort(kind, sparsity):
    scores = LARGE_SCORES[kind](torch.Generator().manual_seed(1))
    mask = MaskSpec("hard", sparsity=sparsity).mask(scores)
    assert torch.equal(mask, _sort_based_hard_mask(scores, sparsity))


def test_hard_threshold_knows_when_no_tie_is_split():
    continuous = hard_mask_threshold(torch.randn(300, 257, generator=torch.Generator().manual_seed(0)), 0.01)
    assert continuous.all_tied_zeroed and int(continuous.num_tied_zeroed) == 1
    split_ties = hard_mask_threshold(torch.full((300, 257), 2.0), 0.01)
    assert not split_ties.all_tied_zeroed and int(split_ties.num_tied_zeroed) == num_zeroed(300 * 257, 0.01)


@pytest.mark.parametrize("name", list(SPECS))
def test_fused_function_matches_reference_on_a_large_matrix_in_float32(name):
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 257, generator=gen).requires_grad_()
    weight = torch.randn(300, 257, generator=gen) * 0.05
    scores = (torch.randn(300, 257, generator=gen) * 2 + 1).requires_grad_()
    out = masked_linear(x, weight, scores, None, spec)
    ref = F.linear(x, masked_weight_reference(weight, scores, spec))
    grad_out = torch.randn_like(out)
    for grad, ref_grad in zip(
        torch.autograd.grad(out, (x, scores), grad_out), torch.autograd.grad(ref, (x, scores), grad_out)
    ):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_gradients_without_input_gradient_match_reference():
    """The first masked layer often gets an input that needs no gradient: only dL/dS is computed then."""
    x, weight, scores, bias = _inputs()
    x = x.detach()
    for spec in SPECS.values():
        out = masked_linear(x, weight, scores, bias, spec)
        ref = F.linear(x, masked_weight_reference(weight, scores, spec), bias)
        torch.testing.assert_close(
            torch.autograd.grad(out.sum(), scores)[0], torch.autograd.grad(ref.sum(), scores)[0]
        )
