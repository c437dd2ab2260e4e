"""Whether bf16 autocast is fast on this machine (the main job and the results runner ask before training in it).

On a CPU without native bf16 (no AVX-512: oneDNN has no bf16 kernel there, e.g. torch's capability "AVX2") PyTorch
runs bf16 matrix products through a fallback kernel; `python -m benchmarks.bf16_matmul` measures how much slower
than fp32 a layer's forward and backward get (benchmarks/README.md). On a GPU, or a CPU with AVX-512 / AMX, bf16
autocast is the fast choice.
"""

from __future__ import annotations

import torch


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


def bf16_is_fast() -> bool:
    """Whether training here in bf16 autocast is not slower than in fp32: on CUDA, or on a CPU with native bf16."""
    return torch.cuda.is_available() or cpu_bf16_is_native()


def slow_bf16_reason() -> str:
    """One sentence for messages: why bf16 autocast is slow on this machine."""
    return (f"this CPU (torch capability {cpu_capability()}) has no native bf16, so bf16 autocast runs matrix "
            "products through a fallback kernel many times slower than fp32 (`python -m benchmarks.bf16_matmul` "
            "measures it; benchmarks/README.md)")
