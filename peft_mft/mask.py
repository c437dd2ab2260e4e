"""Mask maths of Mask Fine-Tuning: soft and hard masks and the masked linear as an autograd Function.

Pure tensor code with no PEFT import, so it can be tested and benchmarked alone.

Shapes: a weight `W` and its scores `S` are both (out_features, in_features); inputs `x` are (..., in_features).
Scores are float32 whatever the weight dtype; masks are computed in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import torch
import torch.nn.functional as F

WeightSource = Union[torch.Tensor, Callable[[], torch.Tensor]]


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def num_zeroed(numel: int, sparsity: float) -> int:
    """Number of entries a hard mask zeroes in a matrix of `numel` entries: `floor(sparsity * numel)`."""
    return int(math.floor(sparsity * numel))


def hard_mask_threshold(scores: torch.Tensor, sparsity: float) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Threshold of a hard mask: the k-th smallest `|S|` and how many entries equal to it are zeroed.

    Uses a selection (`torch.kthvalue`), not a full sort. Returns None when nothing is zeroed (k == 0).
    Both tensors are 0-dim on the scores' device, so no host synchronisation is needed.
    """
    k = num_zeroed(scores.numel(), sparsity)
    if k == 0:
        return None
    abs_scores = scores.detach().abs().flatten()
    threshold = torch.kthvalue(abs_scores, k).values
    num_tied_zeroed = k - (abs_scores < threshold).sum()
    return threshold, num_tied_zeroed


def hard_keep_mask(scores: torch.Tensor, threshold: torch.Tensor, num_tied_zeroed: torch.Tensor) -> torch.Tensor:
    """Boolean keep-mask (True = kept) of `scores`' shape from a threshold made by `hard_mask_threshold`.

    Entries with `|S| < threshold` are zeroed; of the entries with `|S| == threshold`, the first
    `num_tied_zeroed` in row-major (flat index) order are zeroed too, so exactly `floor(sparsity * numel)` entries are
    zeroed even when scores tie (as they do when initialised from quantized weights).
    """
    abs_scores = scores.detach().abs().flatten()
    tied = abs_scores == threshold
    tied_zeroed = tied & (tied.cumsum(0) <= num_tied_zeroed)
    return ~((abs_scores < threshold) | tied_zeroed).view_as(scores)


@dataclass(frozen=True)
class MaskSpec:
    """How one adapter turns its scores into a mask.

    Soft: `M = sigmoid(S / temperature) / normalizer`; `normalizer` is the float32 value of
    `sigmoid(init_score / temperature)` when the mask is normalised to be exactly 1 at initialisation (x / x == 1 in
    IEEE arithmetic), else 1. `straight_through` replaces `dM/dS` by 1 in the backward.
    Hard: `M` is 0 for the `sparsity` fraction of entries with the smallest `|S|`, else 1; always straight-through.
    """

    mask_type: Literal["soft", "hard"]
    temperature: float = 1.0
    normalizer: float = 1.0
    straight_through: bool = False
    sparsity: float = 0.0

    def mask(self, scores: torch.Tensor, hard_threshold=None) -> torch.Tensor:
        """The mask `M` (float32, or float64 for float64 scores; scores' shape).

        `hard_threshold` reuses a `hard_mask_threshold` result.
        """
        scores = _at_least_float32(scores)
        if self.mask_type == "soft":
            return torch.sigmoid(scores / self.temperature) / self.normalizer
        if hard_threshold is None:
            hard_threshold = hard_mask_threshold(scores, self.sparsity)
        if hard_threshold is None:
            return torch.ones_like(scores)
        return hard_keep_mask(scores, *hard_threshold).to(scores.dtype)

    def mask_grad_factor(self, scores: torch.Tensor) -> Optional[torch.Tensor]:
        """`dM/dS` (float32, scores' shape), or None where it is 1 (straight-through and hard masks)."""
        if self.mask_type == "hard" or self.straight_through:
            return None
        sig = torch.sigmoid(_at_least_float32(scores) / self.temperature)
        return sig * (1.0 - sig) / (self.temperature * self.normalizer)


def masked_weight_reference(weight: torch.Tensor, scores: torch.Tensor, spec: MaskSpec) -> torch.Tensor:
    """`W * M` with plain autograd: the reference the fused Function is tested against.

    Straight-through masks use the `S + (M - S).detach()` trick, whose value is `M` and whose gradient is 1.
    Also used when several adapters are active at once (their masks multiply).
    """
    mask = spec.mask(scores)
    if spec.mask_type == "hard" or spec.straight_through:
        scores = _at_least_float32(scores)
        mask = scores + (mask - scores).detach()
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

    Backward: `dL/dx = g (W*M)`, `dL/dS = (g^T x) * W * dM/dS` (at least float32), `dL/db = sum g`.
    """

    @staticmethod
    def forward(ctx, x, weight: WeightSource, scores, bias, spec: MaskSpec):
        weight_fn = weight if callable(weight) else None
        w = weight_fn() if weight_fn is not None else weight
        compute_dtype = _compute_dtype(x)
        hard_threshold = hard_mask_threshold(scores, spec.sparsity) if spec.mask_type == "hard" else None
        masked_weight = (w * spec.mask(scores, hard_threshold)).to(compute_dtype)
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
        mask = spec.mask(scores, ctx.hard_threshold) if (needs_x or needs_w) else None
        grad_out = grad_out.to(dtype)
        if needs_x:
            grad_x = (grad_out @ (w * mask).to(dtype)).to(x.dtype)
        if needs_s or needs_w:
            out_features, in_features = scores.shape
            grad_masked = grad_out.reshape(-1, out_features).T @ x.reshape(-1, in_features).to(dtype)
            if needs_w:
                grad_w = (grad_masked * mask).to(w.dtype)
            if needs_s:
                grad_s = _at_least_float32(grad_masked).mul_(w)
                factor = spec.mask_grad_factor(scores)
                if factor is not None:
                    grad_s.mul_(factor)
                grad_s = grad_s.to(scores.dtype)
        if needs_b and ctx.has_bias:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_w, grad_s, grad_b, None


def masked_linear(
    x: torch.Tensor, weight: WeightSource, scores: torch.Tensor, bias: Optional[torch.Tensor], spec: MaskSpec
) -> torch.Tensor:
    """Apply the masked linear layer; see `MaskedLinearFunction`. Returns (..., out_features)."""
    return MaskedLinearFunction.apply(x, weight, scores, bias, spec)
