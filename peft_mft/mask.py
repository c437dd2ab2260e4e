# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Mask maths of Mask Fine-Tuning: soft and hard masks and the masked linear as an autograd Function.

Pure tensor code with no PEFT import, so it can be tested and benchmarked alone.

Shapes: a weight `W` and its scores are both (out_features, in_features); inputs `x` are (..., in_features).
Scores are float32 whatever the weight dtype; masks are computed in float32.

The trained tensor `P` holds the scores in a scaled form: soft masks read `S = score_offset + score_scale * P`, so an
optimizer step of size `lr` on `P` moves `S` by `score_scale * lr` (a learning-rate multiplier that lives in the
model, whatever the optimizer); hard masks rank `|P|`, which ranks `|S|` alike. With `score_scale` 1 and
`score_offset` 0, `P` is `S`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Literal, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F


WeightSource = Union[torch.Tensor, Callable[[], torch.Tensor]]


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float64 else tensor.float()


@torch.compiler.assume_constant_result  # a function of two constants; torch.compile cannot trace Fraction
def num_zeroed(numel: int, sparsity: float) -> int:
    """Number of entries a hard mask zeroes in a matrix of `numel` entries: `floor(sparsity * numel)`, exactly.

    `sparsity` is taken as the decimal it was written as (the shortest decimal that gives the same float: 0.29 is
    29/100), so 0.29 of 100 is 29; float arithmetic gives 28 (0.29 * 100 == 28.999999999999996).
    """
    return math.floor(Fraction(repr(float(sparsity))) * numel)


class HardThreshold(NamedTuple):
    """Where a hard mask cuts one score matrix (made by `hard_mask_threshold`).

    `value`: 0-dim, the k-th smallest `|S|` (k = `floor(sparsity * numel)`). `num_tied_zeroed`: 0-dim int64, how many
    entries with `|S| == value` are zeroed (lowest flat index first). `all_tied_zeroed`: True when it is known that
    every entry equal to `value` is zeroed (the usual case for trained scores), so `M = (|S| > value)` needs no
    tie-breaking pass; False when some tied entries are kept, or when it was not checked (CUDA and `torch.compile`
    skip the check to avoid a host synchronisation).
    """

    value: torch.Tensor
    num_tied_zeroed: torch.Tensor
    all_tied_zeroed: bool


# CPU selection: torch.kthvalue is a single-threaded quickselect over a copy of the whole tensor (about 6 ms for a
# 1536x576 matrix, a tenth of that layer's three GEMMs). A strided sample bounds the k-th value from above first, so
# the exact selection runs on the ~1.5 k candidates below the bound. The stride is prime so that it visits every
# column.
_SAMPLE_STRIDE = 61
_SAMPLE_MIN_NUMEL = 1 << 16


def _candidates_for_kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """A subset of the 1-D `values` that holds every entry <= its k-th smallest (so the k-th smallest, and the counts
    of entries below and equal to it, are the same in the subset); `values` itself when no smaller subset is found."""
    numel = values.numel()
    if numel < _SAMPLE_MIN_NUMEL:
        return values
    sample = values[::_SAMPLE_STRIDE]
    # 1.5x the expected rank plus a few: the bound falls below the k-th value only for a wildly unrepresentative
    # sample.
    rank = min(sample.numel(), math.ceil(1.5 * k * sample.numel() / numel) + 8)
    bound = torch.kthvalue(sample, rank).values
    candidates = values[values <= bound]
    return candidates if candidates.numel() >= k else values


def hard_mask_threshold(scores: torch.Tensor, sparsity: float) -> Optional[HardThreshold]:
    """Threshold of a hard mask over `scores` (any shape); None when nothing is zeroed (k == 0).

    Raises `ValueError` on CPU when a score is NaN or inf (it has no rank).

    Uses a selection (`torch.kthvalue`), not a full sort. On CUDA and under `torch.compile` no value is read back to
    the host; on CPU the tie counts are read (free there) so that `hard_mask` can skip tie-breaking when no tie is
    split.
    """
    k = num_zeroed(scores.numel(), sparsity)
    if k == 0:
        return None
    abs_scores = scores.detach().abs().flatten()
    if abs_scores.device.type != "cpu" or torch.compiler.is_compiling():
        value = torch.kthvalue(abs_scores, k).values
        return HardThreshold(value, k - (abs_scores < value).sum(), False)
    # NaN has no rank (it would be zeroed on top of the k smallest); on CPU the check costs no host synchronisation.
    # Elsewhere NaN/inf scores are caught at save, load and merge and by peft_mft.FiniteScoresCallback.
    finite = torch.isfinite(abs_scores)
    if not finite.all():
        raise ValueError(
            f"Cannot rank scores of shape {tuple(scores.shape)} for a hard mask: {int((~finite).sum())} of "
            f"{abs_scores.numel()} are NaN or inf (training diverged, or the adapter file is corrupted)."
        )
    candidates = _candidates_for_kth_smallest(abs_scores, k)
    value = torch.kthvalue(candidates, k).values
    num_below, num_tied = int((candidates < value).sum()), int((candidates == value).sum())
    return HardThreshold(value, torch.tensor(k - num_below), num_below + num_tied == k)


def hard_mask(scores: torch.Tensor, threshold: HardThreshold) -> torch.Tensor:
    """The hard mask (1.0 kept, 0.0 zeroed; scores' shape and dtype) for a threshold made by `hard_mask_threshold`.

    Entries with `|S| < threshold.value` are zeroed; of the entries with `|S| == threshold.value`, the first
    `threshold.num_tied_zeroed` in row-major (flat index) order are zeroed too, so exactly `floor(sparsity * numel)`
    entries are zeroed even when scores tie (as they do when initialised from quantized weights).
    """
    abs_scores = scores.detach().abs()
    if threshold.all_tied_zeroed:
        # A comparison written straight into a float tensor is one vectorised pass (a bool result is several times
        # slower).
        return torch.gt(abs_scores, threshold.value, out=abs_scores)
    tied = (abs_scores == threshold.value).flatten()
    keep = (abs_scores > threshold.value).flatten() | (tied & (tied.cumsum(0) > threshold.num_tied_zeroed))
    return keep.view_as(scores).to(scores.dtype)


@dataclass(frozen=True)
class MaskSpec:
    """How one adapter turns its scores into a mask.

    Soft: `M = sigmoid(S / temperature) / normalizer` with `S = score_offset + score_scale * P` for the trained
    tensor `P`; `normalizer` is the float32 value of that sigmoid at the initial `P` when the mask is normalised to be
    exactly 1 at initialisation (x / x == 1 in IEEE arithmetic), else 1. `straight_through` replaces `dM/dS` by 1 in
    the backward. Hard: `M` is 0 for the `sparsity` fraction of entries with the smallest `|P|`, else 1; always
    straight-through; `score_scale` only divides the initial `P` (the ranking does not depend on it).
    """

    mask_type: Literal["soft", "hard"]
    temperature: float = 1.0
    normalizer: float = 1.0
    straight_through: bool = False
    sparsity: float = 0.0
    score_scale: float = 1.0
    score_offset: float = 0.0

    def logits(self, scores: torch.Tensor) -> torch.Tensor:
        """`S / temperature` of a soft mask as a new tensor (at least float32), computed as
        `(P + score_offset / score_scale) / (temperature / score_scale)`: one add and one divide, the same values as
        `P / temperature` when `P` is `S` (scale 1, offset 0)."""
        scale = self.score_scale
        return torch.add(_at_least_float32(scores), self.score_offset / scale).div_(self.temperature / scale)

    def mask(self, scores: torch.Tensor, hard_threshold: Optional[HardThreshold] = None) -> torch.Tensor:
        """The mask `M` (float32, or float64 for float64 scores; scores' shape), differentiable in `scores` for soft
        masks.

        `hard_threshold` reuses a `hard_mask_threshold` result.
        """
        scores = _at_least_float32(scores)
        if self.mask_type == "soft":
            scale = self.score_scale
            return torch.sigmoid((scores + self.score_offset / scale) / (self.temperature / scale)) / self.normalizer
        if hard_threshold is None:
            hard_threshold = hard_mask_threshold(scores, self.sparsity)
        if hard_threshold is None:
            return torch.ones_like(scores)
        return hard_mask(scores, hard_threshold)


def _soft_sigmoid(scores: torch.Tensor, spec: MaskSpec) -> torch.Tensor:
    """`sigmoid(S / temperature)` as one new tensor, computed in place (no autograd; for the Function)."""
    return spec.logits(scores).sigmoid_()


def _fresh_mask(scores: torch.Tensor, spec: MaskSpec, hard_threshold: Optional[HardThreshold]) -> torch.Tensor:
    """`spec.mask(scores, hard_threshold)`, the same values, as a new tensor the caller may overwrite (no autograd)."""
    if spec.mask_type == "soft":
        return _soft_sigmoid(scores, spec).div_(spec.normalizer)
    return spec.mask(scores, hard_threshold)


def masked_weight_reference(weight: torch.Tensor, scores: torch.Tensor, spec: MaskSpec) -> torch.Tensor:
    """`W * M` with plain autograd: the reference the fused Function is tested against.

    Straight-through masks use the `X + (M - X).detach()` trick, whose value is `M` and whose gradient is X's:
    `X = S` (gradient `score_scale` in `P`) for soft masks, `X = |P|` (gradient sign(P)) for hard ones, which rank
    `|P|`.
    Also used when several adapters are active at once (their masks multiply).
    """
    mask = spec.mask(scores)
    if spec.mask_type == "hard" or spec.straight_through:
        scores = _at_least_float32(scores)
        through = scores.abs() if spec.mask_type == "hard" else scores * spec.score_scale
        mask = through + (mask - through).detach()
    return weight * mask.to(weight.dtype)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The GEMM dtype: autocast's where autocast is on, else the input's (as bitsandbytes layers do)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class MaskedLinearFunction(torch.autograd.Function):
    """`y = x (W * M(S))^T + b` with a hand-written backward.

    Nothing of size `W` is kept between forward and backward except `W` and `S` themselves (parameters that are
    alive anyway): `M` and `W * M` are recomputed in the backward. For a quantized base, `weight` is a callable that
    dequantizes on demand, so not even the dequantized weight is kept. Hard masks keep only their threshold (two
    scalars), so the backward does no second selection.

    Backward: `dL/dx = g (W*M)`, `dL/dP = (g^T x) * W * dM/dP` (at least float32), `dL/db = sum g`. For the exact soft
    mask `W * dM/dP = (W*M) (1 - sigmoid(S/T)) / (T / score_scale)`, so one sigmoid per pass serves both `W*M` and
    `dM/dP`. Straight-through soft masks take `dM/dS = 1` (`dM/dP = score_scale`), hard masks `sign(P)` (their mask is
    a function of `|P|`).

    Cost: the three GEMMs of a dense layer with a weight gradient, plus a few element-wise passes over `(out, in)`
    (soft: 4 forward, 6 backward, with one sigmoid each way; hard: 2 forward, 3 backward, plus the selection). Every
    weight-size temporary is written in place where the values allow it, so each pass reads and writes at most three
    such tensors.
    """

    @staticmethod
    def forward(ctx, x, weight: WeightSource, scores, bias, spec: MaskSpec, hard_threshold: Optional[HardThreshold]):
        weight_fn = weight if callable(weight) else None
        w = weight_fn() if weight_fn is not None else weight
        compute_dtype = _compute_dtype(x)
        if spec.mask_type == "hard" and hard_threshold is None:
            hard_threshold = hard_mask_threshold(scores, spec.sparsity)
        # M is a fresh float32 tensor, so W * M can be written into it.
        masked_weight = _fresh_mask(scores, spec, hard_threshold).mul_(w).to(compute_dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = F.linear(
                x.to(compute_dtype), masked_weight, bias.to(compute_dtype) if bias is not None else None
            )
        ctx.spec = spec
        ctx.weight_fn = weight_fn
        ctx.compute_dtype = compute_dtype
        ctx.hard_threshold = hard_threshold
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, scores, None if weight_fn is not None else w)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, scores, w = ctx.saved_tensors
        if w is None:
            w = ctx.weight_fn()
        spec, dtype = ctx.spec, ctx.compute_dtype
        needs_x, needs_w, needs_s, needs_b = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_s = grad_b = None
        exact_soft = spec.mask_type == "soft" and not spec.straight_through
        sigmoid = masked_weight = None
        if needs_x or needs_w or (needs_s and exact_soft):
            if spec.mask_type == "soft":
                sigmoid = _soft_sigmoid(scores, spec)
                mask = torch.div(sigmoid, spec.normalizer)
            else:
                mask = _fresh_mask(scores, spec, ctx.hard_threshold)
            masked_weight = torch.mul(mask, w) if needs_w else mask.mul_(w)
        grad_out = grad_out.to(dtype)
        if needs_x:
            grad_x = (grad_out @ masked_weight.to(dtype)).to(x.dtype)
        if needs_s or needs_w:
            out_features, in_features = scores.shape
            grad_masked = grad_out.reshape(-1, out_features).T @ x.reshape(-1, in_features).to(dtype)
            if needs_w:
                grad_w = (grad_masked * mask).to(w.dtype)
            if needs_s:
                grad_s = _at_least_float32(grad_masked)
                if exact_soft:
                    # g * W * sigmoid (1 - sigmoid) * scale / (T * normalizer) == g * (W*M) * (1 - sigmoid) / (T/scale)
                    grad_s.mul_(masked_weight)
                    grad_s.addcmul_(grad_s, sigmoid, value=-1.0).div_(spec.temperature / spec.score_scale)
                else:
                    grad_s.mul_(w)
                    if spec.mask_type == "soft" and spec.score_scale != 1.0:
                        grad_s.mul_(spec.score_scale)
                    if spec.mask_type == "hard":
                        # M depends on |S|: straight through |.| too, dM/dS = sign(S) (as abs() under autograd in
                        # the authors' code and edge-popup), so a negative score the loss wants kept moves away from 0.
                        grad_s.mul_(torch.sign(scores))
                grad_s = grad_s.to(scores.dtype)
        if needs_b and ctx.has_bias:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_w, grad_s, grad_b, None, None


def masked_linear(
    x: torch.Tensor,
    weight: WeightSource,
    scores: torch.Tensor,
    bias: Optional[torch.Tensor],
    spec: MaskSpec,
    hard_threshold: Optional[HardThreshold] = None,
) -> torch.Tensor:
    """Apply the masked linear layer; see `MaskedLinearFunction`. Returns (..., out_features).

    Hard masks: `hard_threshold` reuses a `hard_mask_threshold(scores, spec.sparsity)` of these very scores (the
    caller keeps it while the scores do not change); None computes it here.
    """
    return MaskedLinearFunction.apply(x, weight, scores, bias, spec, hard_threshold)
