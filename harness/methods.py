# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""``--method`` -> a model ready to train and its optimizer.

| method    | trained                                            | optimizer                       |
|-----------|----------------------------------------------------|---------------------------------|
| mft       | soft-mask scores S (M = sigmoid(S/T)), peft_mft    | `create_mft_optimizer`, score step 0.1 |
| mft-ste   | same, backward dM/dS := 1                          | same                            |
| mft-hard  | hard-mask scores (top-|S| keep, `--sparsity` zeroed) | same (score step 0.01)        |

An MFT method's `lr` is the score step per Adam step (the optimizer's rate times the adapter's `score_scale`), as the
records have always counted it.
| lora      | LoRA A/B on the same modules MFT masks             | AdamW                           |
| qlora     | LoRA on a bitsandbytes NF4 language model          | AdamW                           |
| full      | every language-model and projector weight          | AdamW                           |
| projector | the projector only (LLaVA stage 1; used internally) | AdamW                          |

For every method the vision tower is frozen (and never masked or adapted).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields

import torch
from torch import nn

from peft_mft import MFTConfig, create_mft_optimizer
from peft_mft.training.optim import DEFAULT_HARD_SCORE_STEP, DEFAULT_SCORE_STEP


METHODS = ("mft", "mft-ste", "mft-hard", "lora", "qlora", "full")
INTERNAL_METHODS = ("projector",)
# MFT methods: the score step per Adam step (the optimizer's rate times the adapter's score_scale), as in the records
DEFAULT_LR = {"mft": DEFAULT_SCORE_STEP, "mft-ste": DEFAULT_SCORE_STEP, "mft-hard": DEFAULT_HARD_SCORE_STEP,
              "lora": 1e-3, "qlora": 1e-3, "full": 3e-5, "projector": 1e-3}  # LoRA/full: RESULTS.md's picks


@dataclass
class MethodArgs:
    """Options of every method (defaults are the paper's / the usual ones); unused ones are ignored."""

    lr: float | None = None  # None: DEFAULT_LR[method]
    weight_decay: float = 0.0
    targets: str = "both"  # attn | mlp | both (+ the projector), for MFT and LoRA alike
    layers: list[int] | None = None  # decoder layers to adapt (None: all)
    init_score: float | None = None  # None: the preset MFTConfig picks for the base model
    temperature: float | None = None
    normalize_soft_mask: bool = True
    sparsity: float = 0.01
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | None = None  # regex override
    gradient_checkpointing: bool = False
    mft_on_4bit_base: bool = False  # MFT on a bitsandbytes 4-bit base (the benchmarks' "4bit-base" variants)
    score_scale: float | None = None  # MFT: MFTConfig.score_scale (None: the library's default)
    # MFT: "mft": create_mft_optimizer, `lr` the score step per Adam step; "trainer": the AdamW Trainer builds itself,
    # `lr` its learning rate (a user who only swaps LoraConfig for MFTConfig)
    optimizer: str = "mft"

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> "MethodArgs":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})

    def learning_rate(self, method: str) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[method]


def parse_layers(text: str | None) -> list[int] | None:
    """"8-11" -> [8, 9, 10, 11]; "0,2,5-6" -> [0, 2, 5, 6]; None/"" -> None."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return sorted(set(out))


def add_method_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("method")
    g.add_argument("--method", choices=METHODS, default="mft",
                   help="mft: soft masks M = sigmoid(S/T) / M0 (M0 its initial value); mft-ste: the same with a "
                        "straight-through backward; mft-hard: hard masks zeroing --sparsity of each matrix; lora, "
                        "qlora (LoRA on an NF4 base), full (every language-model and projector weight)")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate (MFT: the score step per Adam step); default per method, validated on the "
                        "embedded model: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items() if k in METHODS))
    g.add_argument("--weight-decay", type=float, default=0.0,
                   help="AdamW weight decay (LoRA/full; never on MFT scores)")
    g.add_argument("--targets", choices=("attn", "mlp", "both"), default="both",
                   help="language-model projections to mask/adapt (plus the multimodal projector)")
    g.add_argument("--layers", type=parse_layers, default=None, help="decoder layers, e.g. 8-11 (default: all)")
    m = parser.add_argument_group("MFT")
    m.add_argument("--init-score", type=float, default=None,
                   help="soft masks: initial score S0 (default: the preset MFTConfig picks for the base model)")
    m.add_argument("--temperature", type=float, default=None,
                   help="soft masks: T in M = sigmoid(S/T) / M0 (default: from the same preset)")
    m.add_argument("--no-normalize-soft-mask", dest="normalize_soft_mask", action="store_false",
                   help="paper-literal M = sigmoid(S/T) instead of dividing by its initial value")
    m.add_argument("--sparsity", type=float, default=0.01, help="mft-hard: fraction of each matrix zeroed")
    m.add_argument("--score-scale", type=float, default=None,
                   help="MFTConfig.score_scale: an optimizer step lr moves a score by score_scale * lr (default: "
                        "the library's, 4096 soft, 256 hard)")
    m.add_argument("--optimizer", choices=("mft", "trainer"), default="mft",
                   help="mft: peft_mft.create_mft_optimizer, --lr the score step per Adam step; trainer: the AdamW "
                        "transformers.Trainer builds itself, --lr its learning rate (LoRA's drop-in path)")
    lo = parser.add_argument_group("LoRA / QLoRA")
    lo.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    lo.add_argument("--lora-alpha", type=int, default=32, help="LoRA scaling numerator (the update is alpha / r)")
    lo.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA input")
    lo.add_argument("--lora-target-modules", default=None,
                    help="full-match regex of module names (default: the modules MFT masks for --targets)")


@dataclass
class PreparedModel:
    model: nn.Module
    optimizer: torch.optim.Optimizer | None  # None: the Trainer builds its own (--optimizer trainer)
    method: str
    trainable_parameters: int
    lr: float
    is_peft: bool
    weight_decay: float = 0.0  # the Trainer-built optimizer's (optimizer None)


def _vision_tower(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.vision_tower


def _is_4bit(model: nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def merge_adapter(model: nn.Module) -> nn.Module:
    """The trained adapter merged into a plain model (``merge_and_unload()``) that computes what ``model`` computes.

    A 4-bit base (QLoRA) is dequantized first (transformers' ``dequantize()``) and the adapter merged in fp32:
    merging into NF4 weights rounds them to the 4-bit grid again, which loses most of a small LoRA update (the
    merged QLoRA model of the embedded default answered like the untuned model, 0% exact match). The fp32 result
    can still differ slightly from the 4-bit model run by bitsandbytes' bf16 CPU kernel (examples/README.md)."""
    if not _is_4bit(model):
        return model.merge_and_unload()
    import copy

    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from peft_mft import restore_standard_4bit_layouts

    config = copy.deepcopy(model.peft_config[model.active_adapter])
    adapter_state = get_peft_model_state_dict(model)
    base = model.unload()
    restore_standard_4bit_layouts(base)  # dequantize() reads the weights with dequantize_4bit
    plain = get_peft_model(base.dequantize(), config)
    set_peft_model_state_dict(plain, adapter_state)
    return plain.merge_and_unload()


def lora_target_names(model: nn.Module, targets: str, layers: list[int] | None, regex: str | None = None) -> list[str]:
    """Full names of the modules LoRA adapts: those `peft_mft` would mask for ``targets`` (or ``regex``),
    outside the vision tower, restricted to ``layers`` (modules outside numbered layers, the projector, stay)."""
    from peft_mft.targets import is_vision_tower_module, layer_index, targets_regex

    pattern = re.compile(regex or targets_regex(targets, language_model_only=True))
    names = []
    for name, module in model.named_modules():
        if not pattern.fullmatch(name) or is_vision_tower_module(name):
            continue
        if not isinstance(module, nn.Linear) and type(module).__name__ not in ("Linear4bit", "Linear8bitLt"):
            continue
        index = layer_index(name, None)
        if layers is not None and index is not None and index not in layers:
            continue
        names.append(name)
    if not names:
        raise ValueError(f"no module matches the LoRA targets {pattern.pattern!r}")
    return names


def mft_config(method: str, args: MethodArgs) -> MFTConfig:
    """The one place where arguments become an `MFTConfig` ("mft", "mft-ste" or "mft-hard")."""
    hard = method == "mft-hard"
    return MFTConfig(
        mask_type="hard" if hard else "soft",
        init_score=args.init_score,
        temperature=args.temperature,
        normalize_soft_mask=args.normalize_soft_mask,
        straight_through=method == "mft-ste",
        sparsity=args.sparsity if hard else None,
        targets=args.targets,
        layers_to_transform=args.layers,
        score_scale=args.score_scale,
    )


def prepare_model(model: nn.Module, method: str, args: MethodArgs | None = None) -> PreparedModel:
    """Freeze what the method does not train, wrap the model (PEFT) where needed, build the optimizer.

    Mutates ``model`` (requires_grad flags; adapter injection). For ``qlora`` the model must have been loaded
    in 4-bit (`load_llava(..., quantize_4bit=True)`)."""
    args = args or MethodArgs()
    if method not in METHODS + INTERNAL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    lr = args.learning_rate(method)
    model.requires_grad_(False)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    is_peft = False

    if method == "projector":
        model.model.multi_modal_projector.requires_grad_(True)
    elif method == "full":
        model.requires_grad_(True)
        _vision_tower(model).requires_grad_(False)
    elif method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if method == "qlora":
            if not _is_4bit(model):
                raise ValueError("--method qlora needs the language model loaded in 4-bit "
                                 "(load_llava(..., quantize_4bit=True)); this model has no bitsandbytes Linear4bit")
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
            model.requires_grad_(False)
        elif _is_4bit(model):
            raise ValueError(f"--method {method} got a 4-bit model; load it without quantize_4bit")
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=lora_target_names(model, args.targets, args.layers, args.lora_target_modules),
            bias="none",
        )
        model = get_peft_model(model, config)
        is_peft = True
    else:  # MFT
        from peft import get_peft_model

        if _is_4bit(model) and not args.mft_on_4bit_base:
            raise ValueError(f"--method {method} got a 4-bit model; MFT here trains on the full-precision base")
        model = get_peft_model(model, mft_config(method, args))
        is_peft = True

    if any(p.requires_grad for p in _vision_tower(model).parameters()):
        raise AssertionError("the vision tower must stay frozen")
    if method.startswith("mft") and args.optimizer == "trainer":
        optimizer = None  # transformers.Trainer builds AdamW at `lr` with `weight_decay`, as for any model
    elif method.startswith("mft"):
        optimizer = create_mft_optimizer(model, lr=lr / model.peft_config["default"].score_scale)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return PreparedModel(model, optimizer, method, trainable, lr, is_peft, args.weight_decay)
