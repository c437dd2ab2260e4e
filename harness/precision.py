# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""bf16 autocast at full speed on any machine: native kernels where the hardware has them, emulated ones elsewhere.

On a CPU without native bf16 (no AVX-512: oneDNN has no bf16 kernel there, e.g. torch's capability "AVX2") torch
runs bf16 matrix products through a fallback kernel: one layer's forward and backward took 23.9x the fp32 time
(`python -m benchmarks.bf16_matmul`), an MFT training step 134 s instead of 6 s. There, `EmulatedBF16` computes each
such product in fp32 on the same bf16 operands and rounds its result to bf16: the rounding points of a native bf16
kernel (bf16 operands, fp32 accumulation, bf16 result), so the two differ only in the order of the fp32 sums, as
native kernels on two CPUs do (torch's AVX2 fallback for a convolution's backward rounds more than that;
tests/test_bf16_emulation.py). `python -m benchmarks.bf16_emulation` checks it on the embedded VLM
(benchmarks/README.md). `fast_bf16()` picks between the two.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here, as torch names it ("AVX2", "AVX512", ...)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_bf16_is_native() -> bool:
    """True where oneDNN runs bf16 matrix products on this CPU (AVX-512 and newer); False where PyTorch falls back
    to its slow reference kernel. Asks oneDNN itself; a torch without that query is judged by the capability."""
    query = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if query is not None:
        return bool(query())
    return cpu_capability().startswith("AVX512")


def bf16_is_native() -> bool:
    """Whether torch's own bf16 kernels are fast here: on CUDA, or on a CPU with native bf16."""
    return torch.cuda.is_available() or cpu_bf16_is_native()


def bf16_kernels() -> str:
    """Which kernels bf16 autocast training uses here under `fast_bf16`: "native" or "emulated"."""
    return "native" if bf16_is_native() else "emulated"


def emulation_reason() -> str:
    """One sentence for messages: why bf16 autocast runs on emulated kernels on this machine."""
    return (f"this CPU (torch capability {cpu_capability()}) has no native bf16 and torch's fallback bf16 kernels "
            "are many times slower than fp32, so bf16 autocast runs its matrix products emulated (fp32 arithmetic "
            "on bf16 values, bf16 results; harness.precision)")


def fast_bf16() -> contextlib.AbstractContextManager:
    """Context for bf16 autocast work: nothing where torch's kernels are native, `EmulatedBF16` elsewhere."""
    return contextlib.nullcontext() if bf16_is_native() else EmulatedBF16()


aten = torch.ops.aten
# torch's kernels that run matrix products and convolutions, as they arrive below autograd (linear and matmul
# decompose into them), forward and backward. Attention is left to torch's kernel: at these sequence lengths it costs
# little (an MFT step of the embedded VLM took the same time either way), and that kernel also rounds its softmax
# weights to bf16, which an fp32 stand-in would not.
_EMULATED_OPS = {
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.addbmm.default,
    aten.convolution.default, aten.convolution_backward.default,
}


class EmulatedBF16(TorchDispatchMode):
    """Context manager: inside it, every `_EMULATED_OPS` call on a bf16 CPU tensor is computed in fp32 on the same
    (bf16) values and its results rounded to bf16, the rounding points of a native bf16 kernel (module docstring).
    Other ops and dtypes run as they are. Covers the products autocast sends to bf16 and those code runs in bf16
    itself (the MFT layer's forward and backward)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _EMULATED_OPS or not _any_bf16_cpu((args, kwargs)):
            return func(*args, **kwargs)
        args, kwargs = tree_map(_float32_if_bf16, (args, kwargs))
        return tree_map(_bf16_if_float32, func(*args, **kwargs))


def _any_bf16_cpu(tree) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 and t.device.type == "cpu"
               for t in tree_flatten(tree)[0])


def _float32_if_bf16(value):
    return value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16 else value


def _bf16_if_float32(value):
    return value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else value
