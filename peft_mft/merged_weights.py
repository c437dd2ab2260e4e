# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The merged model's weights, one tensor at a time, without changing the model: what RL weight sync needs.

TRL's online trainers (GRPO and others with vLLM) copy the policy's weights into the inference engine after every
few steps. For PEFT adapters they call `merge_adapter()`, read `named_parameters()` and `unmerge_adapter()`. On a
bitsandbytes 4-/8-bit base MFT refuses to merge (writing `W * M` back would re-quantize it, lossily), so
`merged_weights` gives the same names and tensors directly: each masked layer's `W * M` with `W` dequantized, every
other parameter as the base model holds it (dequantized where it is quantized). The model is left as it was.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from peft.utils import ModulesToSaveWrapper
from torch import nn

from .bnb_layout import restore_standard_4bit_layout
from .finite import check_finite_scores
from .layer import MFTLayer


def _dequantized(module: nn.Module, name: str, param: torch.Tensor) -> torch.Tensor:
    """A parameter as a plain float tensor: bitsandbytes weights dequantized through their layer."""
    if name == "weight" and type(param).__name__ in ("Params4bit", "Int8Params"):
        from peft.utils.integrations import dequantize_bnb_weight

        restore_standard_4bit_layout(module)  # a weight repacked for the CPU kernel dequantizes wrongly otherwise
        return dequantize_bnb_weight(module.weight, state=getattr(module, "state", None))
    return param.detach()


def merged_weights(
    model: nn.Module, adapter_names: Optional[list[str]] = None, dtype: Optional[torch.dtype] = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every parameter of the merged model, in `model.named_parameters()` order, under the base
    model's names (`model.layers.0.self_attn.q_proj.weight`, as `merge_and_unload()` would save them).

    Masked layers give `W * M` (the product of the masks of `adapter_names`, default the active adapters), computed
    in float32 from the dequantized `W` and cast to `dtype` (default: the base weight's dtype, or float32 for a
    quantized one); `modules_to_save` give their trained copy. Tensors are made one at a time, so a sync loop holds
    one merged matrix at once. NaN/inf scores are refused first, naming the module. On a model whose adapters are
    merged (`merge_adapter()`), the base weights already hold their masks and are given as they are.

    TRL-style weight sync on any base, quantized or not::

        for name, tensor in peft_mft.merged_weights(model):
            llm.load_weights([(name, tensor)])

    Args:
        model: A `PeftModel` or `MFTModel` with MFT layers (quantized bases included); left unchanged.
        adapter_names: The adapters whose masks are applied (default: the active ones).
        dtype: The dtype of the tensors given (default: the base weight's; float32 for quantized ones).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    check_finite_scores(base, adapter_names or _active_adapters(base), action="merge")
    yield from _walk(base, "", adapter_names, dtype, seen=set())


def _active_adapters(model: nn.Module) -> list[str]:
    layer = next((m for m in model.modules() if isinstance(m, MFTLayer)), None)
    return list(layer.active_adapters) if layer is not None else []


def _walk(module: nn.Module, prefix: str, adapter_names, dtype, seen: set) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged parameters of `module` and its children; `seen` holds the ids of parameters already given (a tied
    weight is given once, under its first name, as `named_parameters()` does)."""
    if isinstance(module, MFTLayer):
        base_layer = module.get_base_layer()
        # a merged layer's base weight already holds the masks of `merged_adapters`: multiply by the others only
        names = [n for n in (adapter_names or module.active_adapters)
                 if n in module.mft_scores and n not in module.merged_adapters]
        weight = module.get_base_weight().to(torch.float32)
        for name in names:
            weight = weight * module.get_mask(name)
        quantized = module.quantization_backend is not None
        out_dtype = dtype or (torch.float32 if quantized else base_layer.weight.dtype)
        yield f"{prefix}weight", weight.to(out_dtype)
        if base_layer.bias is not None:
            yield f"{prefix}bias", base_layer.bias.detach().to(dtype or base_layer.bias.dtype)
        return
    if isinstance(module, ModulesToSaveWrapper):
        trained = [name for name in module.active_adapters if name in module.modules_to_save]
        active = module.modules_to_save[trained[0]] if trained else module.original_module
        yield from _walk(active, prefix, adapter_names, dtype, seen)
        return
    for name, param in module.named_parameters(recurse=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        tensor = _dequantized(module, name, param)
        yield f"{prefix}{name}", tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    for name, child in module.named_children():
        yield from _walk(child, f"{prefix}{name}.", adapter_names, dtype, seen)
