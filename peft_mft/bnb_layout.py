# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Undo bitsandbytes' CPU-only 4-bit weight layout before a weight is read outside bitsandbytes' own forward.

On a CPU with AVX512-BF16, `bitsandbytes.nn.Linear4bit.forward` repacks its weight, the first time it runs in eval mode
without gradients, into a layout only its CPU kernel reads (`quant_state.packing_format_for_cpu`). Reading that weight
with `bitsandbytes.functional.dequantize_4bit`, as PEFT does (MFT's masked forward, LoRA's merge), gives wrong values.
That kernel has no backward either: a layer left repacked passes no gradient once training resumes. bitsandbytes
restores the standard layout itself before saving or moving a weight; these helpers do the same before it is read or
trained through. bitsandbytes repacks again on its next such forward. Its repack rounds the block scales to bf16, and
the restored weight keeps that rounding: close to the weight before the repack, not bit-identical. Its inverse leaves
the block scales of a weight without double quantization transposed, (in / blocksize, out) instead of one per block
in row-major order, which dequantizes every row with other rows' scales; `restore_standard_4bit_layout` puts them
back in order.
"""

from __future__ import annotations

from torch import nn


def restore_standard_4bit_layout(layer: nn.Module) -> bool:
    """Give a bitsandbytes `Linear4bit` its standard weight layout back, if it was repacked for the CPU kernel.

    Returns whether it was repacked. Any other layer is left alone (False).
    """
    weight = getattr(layer, "weight", None)
    quant_state = getattr(weight, "quant_state", None)
    if not getattr(quant_state, "packing_format_for_cpu", False):
        return False
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    # the quant state is restored in place, so the layer's references to it stay valid
    weight.data, _ = _convert_weight_packed_for_cpu_inverse(weight.data, quant_state)
    if not quant_state.nested and quant_state.absmax.dim() == 2:
        quant_state.absmax = quant_state.absmax.T.reshape(-1).float()
    return True


def restore_standard_4bit_layouts(model: nn.Module) -> int:
    """`restore_standard_4bit_layout` on every module of `model`; call it before `merge_and_unload()` of an adapter
    (LoRA, ...) on a 4-bit model that ran in eval mode on the CPU. Returns how many layers were repacked.

    Args:
        model: Any module; its bitsandbytes `Linear4bit` layers are restored in place.
    """
    return sum(restore_standard_4bit_layout(module) for module in model.modules())
