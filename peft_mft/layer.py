# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`MFTLayer` and the masked `Linear` that replaces each targeted `nn.Linear` (plain or bitsandbytes-quantized).

Score precision, one rule: an adapter's scores stay float32 (or float64, if cast up), because 16-bit floats cannot
hold score updates (in bf16, 3.0 + 0.005 == 3.0). The one exception is an adapter created with
`get_peft_model(..., autocast_adapter_dtype=False)` on a 16-bit base, whose scores follow the base dtype as PEFT's
contract says (`MFTLayer.scores_follow_base_dtype`, recorded as `MFTConfig.scores_dtype`). Three paths could change
the dtype, and each applies the rule (`MFTLayer.allowed_scores_dtype`): `nn.Module.to` / `.half()` / `.bfloat16()`
casts (`MFTLayer._apply` moves scores but keeps their precision); PEFT's adapter-dtype hook
(`MFTModel._cast_adapter_dtype`, the exception); and a trainer that casts trainable parameters through `param.data`
(TRL's SFTTrainer on a quantized base), which `MFTLayer.hold_scores_dtype` undoes before the layer's next forward:
exactly for a fresh adapter (its initial scores recomputed), otherwise widened with a warning.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from peft.utils import quantization_extra_repr, resolve_quantization_backend
from peft.utils.integrations import gather_params_ctx
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from .bnb_layout import restore_standard_4bit_layout
from .config import MFTConfig
from .errors import QuantizedMergeError
from .mask import HardThreshold, MaskSpec, hard_mask_threshold, masked_linear, masked_weight_reference


def score_version(scores: torch.Tensor) -> tuple:
    """A key that changes whenever `scores` is written in place through the parameter or replaced: the tensor object,
    its version counter, storage, device and dtype. Writes through `.data` bump none of these (bitsandbytes'
    optimizers write so); `MFTLayer` drops its thresholds once gradients reach the scores, before any step."""
    return (id(scores), scores._version, scores.data_ptr(), str(scores.device), scores.dtype)


def initial_hard_scores(weight: torch.Tensor, score_scale: float = 1.0) -> torch.Tensor:
    """The scores a hard mask starts from: `|W| / mean |W| / score_scale` (float32, W's shape), so the first zeroed
    entries are the smallest-magnitude weights."""
    scores = weight.abs().to(torch.float32)
    # A unit mean whatever the layer's weight scale, so that an optimizer step of `score_scale * lr` is the same share
    # of a typical score in every layer.
    mean = scores.mean()
    if mean > 0:
        scores /= mean
    return scores.div_(score_scale) if score_scale != 1.0 else scores


def quantized_merge_error(backend_name: str, module_name: Optional[str] = None) -> QuantizedMergeError:
    """The one refusal to merge masks into a quantized layer (`module_name` where known)."""
    where = f"{module_name!r}, a {backend_name} layer" if module_name else f"a {backend_name} layer"
    return QuantizedMergeError(
        f"Cannot merge MFT masks into {where}: re-quantizing W * M is lossy (a 4-bit merge can move logits by ~0.5). "
        "Load the base model without quantization (e.g. dtype=torch.bfloat16), load the adapter on it with "
        "PeftModel.from_pretrained, then call merge_and_unload(). For weight sync (RL with vLLM), "
        "peft_mft.merged_weights(model) gives every merged weight, dequantized, without changing the model."
    )


class MFTLayer(BaseTunerLayer):
    """Per-adapter MFT state of one layer: a float32 score tensor (out_features, in_features) and its `MaskSpec`.

    Args:
        base_layer: The `nn.Linear` (or bitsandbytes `Linear8bitLt` / `Linear4bit`) whose weight is masked.
        **kwargs: PEFT's quantization keywords, kept for `get_apply_tensor_subclass`.
    """

    adapter_layer_names = ("mft_scores",)
    other_param_names = ("mft_mask_spec",)

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.mft_scores = nn.ParameterDict({})
        self.mft_mask_spec: dict[str, MaskSpec] = {}
        self.quantization_backend = resolve_quantization_backend(
            self.get_base_layer(), get_apply_tensor_subclass=kwargs.get("get_apply_tensor_subclass")
        )
        self._disable_adapters = False
        self.merged_adapters = []
        self.in_features, self.out_features = _get_in_out_features(self.get_base_layer())
        self.kwargs = kwargs
        # adapters whose scores were asked to follow a 16-bit base (`autocast_adapter_dtype=False`)
        self.scores_follow_base_dtype: set[str] = set()
        # adapter -> its config, while its scores may still be the initial ones (`hold_scores_dtype` restores those)
        self._initial_config: dict[str, MFTConfig] = {}
        # adapter -> (score_version of the scores it was selected from, threshold): see `hard_threshold`
        self._hard_thresholds: dict[str, tuple[tuple, Optional[HardThreshold]]] = {}
        # the score tensors whose accumulated gradient drops their adapter's threshold (`hard_threshold`)
        self._forget_on_gradient = WeakTensorKeyDictionary()

    def get_base_weight(self) -> torch.Tensor:
        """The base weight, dequantized for quantized bases (a 4-bit one first gets its standard layout back, see
        `peft_mft.bnb_layout`)."""
        restore_standard_4bit_layout(self.get_base_layer())
        return super().get_base_weight()

    def update_layer(self, adapter_name: str, config: MFTConfig, inference_mode: bool = False) -> None:
        """Add adapter `adapter_name`: scores initialised as `config` says, float32, on the base weight's device."""
        # The device only: dequantizing a 4-bit weight here would allocate a full float copy for nothing.
        shape, device = (self.out_features, self.in_features), self.get_base_layer().weight.device
        spec = config.mask_spec(device)
        if config.init_weights:
            scores = self.initial_scores(config)
        elif config.mask_type == "soft":  # S = init_score + 2 T N(0, 1)
            noise = torch.randn(shape, dtype=torch.float32, device=device)
            scores = config.initial_trained_score + (2.0 * config.temperature / config.score_scale) * noise
        else:
            scores = torch.randn(shape, dtype=torch.float32, device=device)
        self.mft_scores[adapter_name] = nn.Parameter(scores)
        self.mft_mask_spec[adapter_name] = spec
        self._hard_thresholds.pop(adapter_name, None)
        if config.init_weights:
            self._initial_config[adapter_name] = config
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def initial_scores(self, config: MFTConfig) -> torch.Tensor:
        """The float32 trained tensor P of a fresh adapter with `config` (`init_weights=True`), (out, in): for soft
        masks the P of `init_score` everywhere (0 unless P is S), for hard masks |W| / mean |W| / score_scale of this
        layer's weight."""
        shape, device = (self.out_features, self.in_features), self.get_base_layer().weight.device
        if config.mask_type == "soft":
            return torch.full(shape, config.initial_trained_score, dtype=torch.float32, device=device)
        # Under DeepSpeed ZeRO-3 the weight is partitioned (shape [0], real shape in `ds_shape`): gather it to read it.
        with gather_params_ctx(self.get_base_layer().weight, modifier_rank=None):
            return initial_hard_scores(self.get_base_weight().detach(), config.score_scale)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        """Move scores to the base layer's device but keep them float32: bf16 cannot hold small score updates."""
        scores = self.mft_scores.get(adapter_name)
        if scores is None or scores.device.type == "meta":
            return
        if device is None:
            device, _ = self._get_base_layer_device_and_dtype(self.get_base_layer())
        if device is not None and scores.device != torch.device(device):
            self.mft_scores[adapter_name] = nn.Parameter(scores.to(device), requires_grad=scores.requires_grad)

    def allowed_scores_dtype(self, adapter_name: str, proposed: torch.dtype) -> torch.dtype:
        """The dtype `adapter_name`'s scores take when a cast proposes `proposed` (the module's rule): `proposed` if
        it is float32 or float64, or if the scores follow a 16-bit base; else their current dtype."""
        if proposed in (torch.float32, torch.float64) or adapter_name in self.scores_follow_base_dtype:
            return proposed
        return self.mft_scores[adapter_name].dtype

    def cast_scores_to_base_dtype(self, adapter_name: str) -> Optional[torch.dtype]:
        """Make `adapter_name`'s scores follow the base weight's floating dtype (bf16/fp16 bases; PEFT's
        `autocast_adapter_dtype=False`); returns that dtype, or None where nothing changed (float32 or quantized
        bases)."""
        scores = self.mft_scores.get(adapter_name)
        dtype = self.get_base_layer().weight.dtype
        if scores is None or not dtype.is_floating_point or scores.dtype == dtype:
            return None
        self.scores_follow_base_dtype.add(adapter_name)
        scores.data = scores.data.to(self.allowed_scores_dtype(adapter_name, dtype))
        return dtype

    def hold_scores_dtype(self) -> list[str]:
        """Undo a 16-bit cast of scores made through `param.data` (which `_apply` never sees): scores not of the
        dtype the rule allows become float32 again. A fresh adapter gets its exact initial scores back (recomputed
        and checked against the cast values); others are widened, their lost digits lost: returns those adapters."""
        widened = []
        for adapter_name, scores in self.mft_scores.items():
            if scores.dtype in (torch.float32, torch.float64) or adapter_name in self.scores_follow_base_dtype:
                continue
            config = self._initial_config.get(adapter_name)
            initial = self.initial_scores(config) if config is not None else None
            if initial is not None and torch.equal(initial.to(scores.dtype), scores.data):
                scores.data = initial
            else:
                scores.data = scores.data.float()
                widened.append(adapter_name)
            self._hard_thresholds.pop(adapter_name, None)
        return widened

    def hard_threshold(self, adapter_name: str) -> Optional[HardThreshold]:
        """The hard mask's threshold over `adapter_name`'s current scores, selected again only when the scores may
        have changed: after a write through the parameter, or once gradients reached them (an optimizer step may
        follow, and some write through `.data`). So once per training forward, once in all of `generate`.
        None for soft masks, and under `torch.compile` (the masked linear then selects in the traced graph)."""
        spec = self.mft_mask_spec[adapter_name]
        if spec.mask_type != "hard" or torch.compiler.is_compiling():
            return None
        scores = self.mft_scores[adapter_name]
        self._forget_when_gradient_arrives(adapter_name, scores)
        version = score_version(scores)
        cached = self._hard_thresholds.get(adapter_name)
        if cached is None or cached[0] != version:
            cached = (version, hard_mask_threshold(scores, spec.sparsity))
            self._hard_thresholds[adapter_name] = cached
        return cached[1]

    def _forget_when_gradient_arrives(self, adapter_name: str, scores: torch.Tensor) -> None:
        """Hook `scores` (once per tensor) so that its accumulated gradient drops `adapter_name`'s threshold."""
        # A view of a flat parameter (FSDP's use_orig_params) takes no such hook, but shares its base's version
        # counter, which an in-place optimizer step bumps.
        if not scores.requires_grad or not scores.is_leaf or scores in self._forget_on_gradient:
            return
        self._forget_on_gradient[scores] = adapter_name
        thresholds = self._hard_thresholds  # not `self`: the hook must not keep the layer alive

        def forget(_: torch.Tensor) -> None:
            thresholds.pop(adapter_name, None)

        scores.register_post_accumulate_grad_hook(forget)

    def forget_hard_thresholds(self) -> None:
        """Select every hard mask's threshold again at the next forward (after writing scores through `.data`)."""
        self._hard_thresholds.clear()

    def get_mask(self, adapter_name: str) -> torch.Tensor:
        """The current mask `M` of `adapter_name` (float32, (out_features, in_features)), without gradient."""
        with torch.no_grad():
            spec, scores = self.mft_mask_spec[adapter_name], self.mft_scores[adapter_name]
            return spec.mask(scores, self.hard_threshold(adapter_name))


class Linear(nn.Module, MFTLayer):
    """`nn.Linear` (or a bitsandbytes `Linear8bitLt` / `Linear4bit`) whose weight is used as `W * M`."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MFTConfig, **kwargs) -> None:
        super().__init__()
        MFTLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def _masked_weight_source(self):
        """The frozen weight for the masked GEMM: the parameter itself, or a dequantizing callable for quantized
        bases (called again in the backward instead of keeping the dequantized copy alive)."""
        if self.quantization_backend is not None:
            return self.get_base_weight
        return self.get_base_layer().weight

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is not None and not self.disable_adapters:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.mft_scores]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        if any(self.mft_scores[name].dtype not in (torch.float32, torch.float64) for name in active):
            self._widen_cast_scores()
        bias = self.get_base_layer().bias
        if len(active) == 1:
            name = active[0]
            return masked_linear(
                x, self._masked_weight_source(), self.mft_scores[name], bias, self.mft_mask_spec[name],
                self.hard_threshold(name),
            )
        # Several active adapters: their masks multiply. Plain autograd is fine for this rare case.
        weight = self.get_base_weight()
        for name in active:
            weight = masked_weight_reference(weight, self.mft_scores[name], self.mft_mask_spec[name])
        return F.linear(x, weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None)

    def _widen_cast_scores(self) -> None:
        widened = self.hold_scores_dtype()
        if widened:
            warnings.warn(
                f"MFT scores of adapter {widened[0]!r} had been cast to 16 bits after they were trained or randomly "
                "initialised (a trainer casting trainable parameters, e.g. TRL on a quantized base); they are float32 "
                "again but keep the 16-bit rounding. Load a trained adapter after creating the trainer to keep its "
                "exact scores.",
                stacklevel=3,
            )

    def _mixed_batch_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
        """Row i of `x` (batch first) through adapter `adapter_names[i]`: its masked weight, or the base layer for
        "__base__" and for adapters that do not mask this layer."""
        if len(adapter_names) != len(x):
            raise ValueError(
                f"Length of `adapter_names` should be the same as the number of inputs, but got {len(adapter_names)} "
                f"and {len(x)} respectively."
            )
        if self.merged:
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
            )
        rows_of: dict[str, list[int]] = {}
        for row, name in enumerate(adapter_names):
            rows_of.setdefault(name, []).append(row)
        result = None
        for name, rows in rows_of.items():
            index = torch.tensor(rows, device=x.device)
            if name in self.mft_scores:
                spec, scores = self.mft_mask_spec[name], self.mft_scores[name]
                out = masked_linear(
                    x[index], self._masked_weight_source(), scores, self.get_base_layer().bias, spec,
                    self.hard_threshold(name),
                )
            else:
                out = self.base_layer(x[index], *args, **kwargs)
            if result is None:
                result = out.new_empty((len(x), *out.shape[1:]))
            result[index] = out.to(result.dtype)
        return result

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Write `W * M` into the base weight for each adapter in `adapter_names` (default: the active ones).

        A mask with zeros cannot be divided out, so the first merge keeps a copy of the original weight (one extra
        weight matrix per layer, in the base dtype) in the non-persistent buffer `weight_before_merge` until
        `unmerge`. `safe_merge=True` checks the merged weight for NaN/inf before writing it.
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        if self.quantization_backend is not None:
            raise quantized_merge_error(self.quantization_backend.backend_name)
        # DeepSpeed ZeRO-3: gather the partitioned weight and scores; rank 0's merged weight is partitioned again.
        with gather_params_ctx(self._weight_and_scores(), modifier_rank=0):
            original = self.get_base_weight()
            merged, merged_names = original, []
            for name in adapter_names:
                if name in self.mft_scores:
                    merged = (merged * self.get_mask(name)).to(original.dtype)
                    merged_names.append(name)
            if not merged_names:
                return
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(
                    f"NaN or inf in the merged weight of adapters {merged_names} ({self.out_features}x"
                    f"{self.in_features} layer); the adapter seems broken. Nothing was merged into this layer."
                )
            if not self.merged:
                self.register_buffer("weight_before_merge", original, persistent=False)
            self.set_base_weight(merged)
        self.merged_adapters.extend(merged_names)

    def unmerge(self) -> None:
        """Restore the exact original weight saved by the first `merge`."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        with gather_params_ctx(self.get_base_layer().weight, modifier_rank=0):  # DeepSpeed ZeRO-3
            self.set_base_weight(self.weight_before_merge)
        del self.weight_before_merge
        self.merged_adapters.clear()

    def _apply(self, fn, recurse: bool = True):
        """`nn.Module.to` / `.half()` / `.bfloat16()` / `.cuda()` move the scores; their dtype follows the module's
        rule (`allowed_scores_dtype`): casts to float32 or float64 apply, lower ones do not."""
        scores = self._modules.pop("mft_scores")
        try:
            super()._apply(fn, recurse)
        finally:
            self._modules["mft_scores"] = scores
        for adapter_name, param in scores.items():
            # `fn` is opaque (a lambda of Module.to); applying it to an empty tensor like the scores tells where and to
            # what dtype this call moves them, without casting the scores themselves through a lower precision.
            probe = fn(torch.empty(0, dtype=param.dtype, device=param.device))
            dtype = self.allowed_scores_dtype(adapter_name, probe.dtype)
            if param.device != probe.device or param.dtype != dtype:
                param.data = param.data.to(device=probe.device, dtype=dtype)
                if param.grad is not None:
                    param.grad = param.grad.to(device=probe.device, dtype=dtype)
        return self

    def _weight_and_scores(self) -> list[nn.Parameter]:
        return [self.get_base_layer().weight, *self.mft_scores.values()]

    def __repr__(self) -> str:
        return "mft." + super().__repr__()

    def extra_repr(self) -> str:
        return quantization_extra_repr(self)
