# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Benchmark variants: an example `--method` plus memory-saving options, set up with the examples' own code.

A variant is written `METHOD[+OPTION...]`:

- METHOD: `mft`, `mft-ste`, `mft-hard`, `full`, `lora-r<R>`, `qlora-r<R>` (LoRA with rank R, alpha 2R, on the modules
  MFT masks; QLoRA over a bitsandbytes NF4 language model).
- OPTION (each is a memory-saving choice the README measures):
  - `adamw8bit`, `paged-adamw8bit`: bitsandbytes 8-bit AdamW states (paged falls back to plain on CPU);
  - `sgd`: SGD with momentum 0.9 (one state tensor instead of AdamW's two);
  - `adafactor`: transformers' Adafactor without a first moment and with the second moment factored into a row and
    a column vector per matrix (state O(rows + cols) instead of AdamW's 2 x rows x cols), at the method's lr;
  - `bf16-base`: MFT only; the frozen masked weights held in bfloat16 while scores, activations and GEMMs stay float32
    (the masked linear multiplies the bf16 weight by the float32 mask);
  - `4bit-base`: MFT only; the language model loaded in bitsandbytes NF4 (as for QLoRA), scores float32;
  - `gc`: gradient checkpointing (non-reentrant);
  - `step-in-backward`: each parameter's optimizer step runs as soon as its gradient is complete, and the gradient is
    freed at once, so gradients of the whole model never exist together (PyTorch's "optimizer step in backward"
    recipe, `peft_mft.OptimizerInBackward`). No gradient clipping or accumulation then (with
    `--accuracy-steps`, Trainer runs with `max_grad_norm=0`; its LR schedule still applies);
  - `answer-logits`: the timed steps compute the LM head only where the loss reads it, at answer positions
    (`harness.answer_loss`), as the examples' Trainer helper always does (so `--accuracy-steps` ignores it); without
    it they project every position onto the vocabulary, as `model(**batch, labels=...)` does.

Model loading, data and `prepare_model` come from `harness`, so a variant here trains exactly what
`python -m examples.llava.train_methods --method ...` trains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.methods import MethodArgs, PreparedModel, prepare_model
from peft_mft.training.optimizer_in_backward import OptimizerInBackward


MFT_METHODS = ("mft", "mft-ste", "mft-hard")
OPTIMIZER_OPTIONS = ("adamw8bit", "paged-adamw8bit", "sgd", "adafactor")
OPTIONS = OPTIMIZER_OPTIONS + ("bf16-base", "4bit-base", "gc", "step-in-backward", "answer-logits")
SGD_MOMENTUM = 0.9
_METHOD = re.compile(r"^(mft|mft-ste|mft-hard|full|(?:q?lora)-r(\d+))$")


@dataclass(frozen=True)
class Variant:
    """A parsed `METHOD[+OPTION...]`."""

    name: str
    method: str  # an harness.methods METHOD
    lora_r: int | None = None
    options: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_mft(self) -> bool:
        return self.method in MFT_METHODS

    @property
    def quantized_base(self) -> bool:
        return self.method == "qlora" or "4bit-base" in self.options


def parse_variant(text: str) -> Variant:
    """`"mft+bf16-base+gc"` -> Variant("mft+bf16-base+gc", "mft", None, ("bf16-base", "gc")). Raises ValueError."""
    method_text, *options = text.strip().split("+")
    match = _METHOD.match(method_text)
    if not match:
        raise ValueError(f"Variant {text!r}: unknown method {method_text!r}; use mft, mft-ste, mft-hard, full, "
                         "lora-r<R> or qlora-r<R> (e.g. lora-r8).")
    unknown = [option for option in options if option not in OPTIONS]
    if unknown:
        raise ValueError(f"Variant {text!r}: unknown option(s) {unknown}; known: {list(OPTIONS)}.")
    lora_r = int(match.group(2)) if match.group(2) else None
    method = method_text.split("-r")[0] if lora_r is not None else method_text
    variant = Variant(text.strip(), method, lora_r, tuple(options))
    for option in ("bf16-base", "4bit-base"):
        if option in options and not variant.is_mft:
            raise ValueError(f"Variant {text!r}: {option} applies to MFT methods (use qlora-r<R> for LoRA on 4-bit).")
    if "bf16-base" in options and "4bit-base" in options:
        raise ValueError(f"Variant {text!r}: choose one of bf16-base and 4bit-base.")
    if sum(option in options for option in OPTIMIZER_OPTIONS) > 1:
        raise ValueError(f"Variant {text!r}: give at most one optimizer option.")
    return variant


def method_args(variant: Variant) -> MethodArgs:
    """The examples' `MethodArgs` for this variant (everything else at the examples' defaults)."""
    args = MethodArgs(gradient_checkpointing="gc" in variant.options, mft_on_4bit_base="4bit-base" in variant.options)
    if variant.lora_r is not None:
        args.lora_r, args.lora_alpha = variant.lora_r, 2 * variant.lora_r
    return args


def hold_masked_weights_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen base weight of every MFT layer in `dtype` (e.g. bfloat16); scores stay float32.

    The masked linear computes `W * M` in float32 and runs the GEMM in the input's dtype, so activations stay float32.
    Returns the number of weights converted. Mutates `model`.
    """
    from peft_mft.layer import MFTLayer

    converted = 0
    for module in model.modules():
        if isinstance(module, MFTLayer):
            base = module.get_base_layer()
            base.weight = nn.Parameter(base.weight.detach().to(dtype), requires_grad=False)
            converted += base.weight.numel()
    return converted


def _optimizer(prepared: PreparedModel, variant: Variant) -> torch.optim.Optimizer:
    """The optimizer an option asks for, with the learning rate and parameter groups of the prepared one."""
    choice = next((option for option in OPTIMIZER_OPTIONS if option in variant.options), None)
    if choice is None:
        return prepared.optimizer
    if choice == "sgd":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": SGD_MOMENTUM}
    elif choice == "adafactor":
        from transformers.optimization import Adafactor

        # a fixed lr (the schedule is Trainer's), no first moment: the factored second moment is the whole state
        optimizer_cls, kwargs = Adafactor, {"scale_parameter": False, "relative_step": False, "beta1": None}
    else:
        import bitsandbytes as bnb

        optimizer_cls, kwargs = (bnb.optim.AdamW8bit if choice == "adamw8bit" else bnb.optim.PagedAdamW8bit), {}
    groups = [{k: v for k, v in group.items() if k in ("params", "lr", "weight_decay")}
              for group in prepared.optimizer.param_groups]
    return optimizer_cls(groups, lr=prepared.lr, **kwargs)


def prepare_variant(model: nn.Module, variant: Variant) -> PreparedModel:
    """Freeze, wrap and build the optimizer for `variant` (the model must be loaded in 4-bit exactly when
    `variant.quantized_base`). Mutates `model`."""
    prepared = prepare_model(model, variant.method, method_args(variant))
    if "bf16-base" in variant.options:
        hold_masked_weights_in(prepared.model, torch.bfloat16)
    prepared.optimizer = _optimizer(prepared, variant)
    if "step-in-backward" in variant.options:
        prepared.optimizer = OptimizerInBackward(prepared.optimizer)
    return prepared
