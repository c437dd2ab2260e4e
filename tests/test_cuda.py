# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""What only a CUDA device can check: 16-bit autocast, the hard-mask selection on the GPU, bitsandbytes 4-bit CUDA
kernels, inductor's GPU code, and `TensorMemory` against the allocator's own count. Skipped without CUDA; run them
with `benchmarks/device_check.sh` on a GPU machine."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from peft_mft import MFTConfig, create_mft_optimizer
from peft_mft.mask import MaskSpec, hard_mask_threshold, masked_linear, masked_weight_reference

from .conftest import make_llama, text_inputs


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device "
                                                                      "(benchmarks/device_check.sh)")
CUDA = torch.device("cuda")
SPECS = {"soft": MaskSpec("soft", temperature=0.5, normalizer=0.998), "hard": MaskSpec("hard", sparsity=0.3)}


def _inputs(device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, 64, generator=gen).to(device, dtype).requires_grad_()
    weight = torch.randn(48, 64, generator=gen).to(device, dtype)
    scores = (3.0 + torch.randn(48, 64, generator=gen)).to(device).requires_grad_()
    return x, weight, scores


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(SPECS))
def test_masked_linear_under_autocast_matches_the_reference(name, dtype):
    spec = SPECS[name]
    x, weight, scores = _inputs(CUDA)
    with torch.autocast("cuda", dtype=dtype):
        out = masked_linear(x, weight, scores, None, spec)
        ref = F.linear(x, masked_weight_reference(weight, scores, spec))
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    grads = torch.autograd.grad(out.float().sum(), (x, scores))
    ref_grads = torch.autograd.grad(ref.float().sum(), (x, scores))
    assert grads[1].dtype == torch.float32  # score gradients stay float32 under autocast
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad.float(), ref_grad.float(), atol=5e-2, rtol=5e-2)


def test_hard_threshold_on_the_gpu_zeroes_the_same_entries_as_on_the_cpu():
    scores = torch.randint(-50, 50, (300, 257)).float() / 7  # many ties
    for sparsity in (0.01, 0.3, 0.77):
        cpu = MaskSpec("hard", sparsity=sparsity).mask(scores, hard_mask_threshold(scores, sparsity))
        gpu = MaskSpec("hard", sparsity=sparsity).mask(scores.to(CUDA), hard_mask_threshold(scores.to(CUDA), sparsity))
        assert torch.equal(gpu.cpu(), cpu)


def test_4bit_base_trains_scores_on_cuda():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    layer = bnb.nn.Linear4bit(64, 32, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4")
    layer.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    model = torch.nn.Sequential(layer.to(CUDA))
    model = get_peft_model(model, MFTConfig(target_modules=["0"], init_score=3.0, temperature=0.5))
    x = torch.randn(16, 64, device=CUDA)
    masked = model.base_model.model[0]
    expected = F.linear(x, masked.get_base_weight().float() * masked.get_mask("default"), masked.get_base_layer().bias)
    torch.testing.assert_close(model(x).float(), expected, atol=3e-2, rtol=3e-2)
    optimizer = create_mft_optimizer(model)
    before = masked.mft_scores["default"].detach().clone()
    model(x).float().square().mean().backward()
    optimizer.step()
    assert masked.mft_scores["default"].dtype == torch.float32
    assert not torch.equal(masked.mft_scores["default"], before)


@pytest.mark.parametrize("name", list(SPECS))
def test_inductor_on_the_gpu_matches_eager(name):
    torch._dynamo.reset()
    spec = SPECS[name]
    x, weight, scores = _inputs(CUDA)
    compiled = torch.compile(lambda x, s: masked_linear(x, weight, s, None, spec), backend="inductor", fullgraph=True)
    out = compiled(x, scores)
    torch.testing.assert_close(out, F.linear(x, masked_weight_reference(weight, scores, spec)), atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()


def test_tensor_memory_agrees_with_the_cuda_allocator():
    """TensorMemory's peak of live tensor bytes against torch.cuda.max_memory_allocated over the same step (the
    allocator rounds every block up to 512 bytes and counts cuBLAS workspaces, so it reads a little higher)."""
    from harness.tensor_memory import TensorMemory

    model = get_peft_model(make_llama().to(CUDA), MFTConfig(init_score=3.0, temperature=0.5))
    optimizer = create_mft_optimizer(model)
    ids = text_inputs(batch=8, length=64).to(CUDA)
    for _ in range(2):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with TensorMemory(model, optimizer) as tensors:
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
        torch.cuda.synchronize()
        allocator_peak = torch.cuda.max_memory_allocated()
        result = tensors.peak_by_category()
        optimizer.zero_grad(set_to_none=True)
    assert result["peak"] <= allocator_peak <= 1.25 * result["peak"] + 8 * 2**20
