# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`MFTModel`: the PEFT tuner that replaces targeted linear layers with masked ones."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import warnings
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from peft.utils import get_quantization_kwargs, resolve_quantization_backend
from peft.utils.error import NoMatchingPeftModuleError
from peft.utils.quantization_utils import ForwardOnlyQuantizationBackend
from torch import nn

from .adapter_files import check_finite_state_dict, check_scores_fit_model
from .config import MFTConfig, preset_for_model
from .finite import check_finite_scores
from .layer import Linear, MFTLayer, quantized_merge_error
from .progress_guard import MaskProgressGuard
from .targets import (
    TRANSFORMERS_MODELS_TO_MFT_TARGET_MODULES_MAPPING,
    is_projector,
    is_vision_tower_module,
    layer_index,
    targets_regex,
)


logger = logging.getLogger(__name__)


def _adapter_names_pre_forward_hook(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def describe_masked(names: list[str]) -> str:
    """Module names grouped with their layer indices replaced by '*': 'model.layers.*.self_attn.q_proj (x2), ...'."""
    counts: dict[str, int] = {}
    for name in names:
        pattern = re.sub(r"\.\d+\.", ".*.", name)
        counts[pattern] = counts.get(pattern, 0) + 1
    return ", ".join(f"{pattern} (x{count})" if count > 1 else pattern for pattern, count in counts.items())


def warn_about_unmaskable_parts(model: nn.Module) -> None:
    """Warn about weights MFT cannot mask where a user expects masks: a VLM projector that is not an `nn.Linear`
    (Gemma3's bare `mm_input_projection_weight`) and MoE experts fused into 3-D parameters (Llama4TextExperts)."""
    projector_parameters = [
        f"{name}.{param_name}"
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "multi_modal_projector"
        and not any(isinstance(m, (nn.Linear, MFTLayer)) for m in module.modules())
        for param_name, param in module.named_parameters()
        if param.ndim == 2
    ]
    if projector_parameters:
        warnings.warn(
            f"The image-text projector of this model is not an nn.Linear ({', '.join(projector_parameters)}), so "
            "MFT leaves it unmasked; only the language model's projections are masked. Gemma3 keeps its projector as "
            "a bare parameter; train it in full with MFTConfig(modules_to_save=['multi_modal_projector']) if needed.",
            stacklevel=3,
        )
    fused_experts = [
        name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "experts"
        and any(param.ndim == 3 for param in module.parameters(recurse=False))
    ]
    if fused_experts:
        warnings.warn(
            f"{len(fused_experts)} MoE expert blocks keep their experts as fused 3-D parameters, not nn.Linear "
            f"({describe_masked(fused_experts)}); MFT masks only linears, so the experts stay unmasked (their shared "
            "experts and every other projection are masked).",
            stacklevel=3,
        )


class MFTModel(BaseTuner):
    """Mask Fine-Tuning model: each targeted `nn.Linear` weight `W` is used as `W * M(S)` with trainable scores `S`.

    Created by `peft.get_peft_model(model, MFTConfig(...))` once `peft_mft` is imported. Vision towers are never
    masked. Saving stores only the scores (and `modules_to_save`).

    Example:
        ```py
        >>> import peft_mft
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base_model, peft_mft.MFTConfig(targets="both"))
        ```

    Its arguments are `BaseTuner`'s, as for every PEFT tuner: `model` (the base model, changed in place: targeted
    linears are replaced), `peft_config` (the `MFTConfig`, or a dict of them by adapter name), `adapter_name`,
    `low_cpu_mem_usage` and `state_dict`.
    """

    prefix: str = "mft_"
    tuner_layer_cls = MFTLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_MFT_TARGET_MODULES_MAPPING

    def _prepare_adapter_config(self, peft_config: MFTConfig, model_config: dict) -> MFTConfig:
        """Resolve the soft-mask preset from the base model (`preset_for_model`) where `init_score` / `temperature`
        are not given, and `targets` (or the architecture default) into `target_modules`."""
        self._generic_rule_model_type = None
        if peft_config.mask_type == "soft" and (peft_config.init_score is None or peft_config.temperature is None):
            preset, why = preset_for_model(model_config)
            peft_config.resolve_preset(preset)
            peft_config._check_soft_mask()
            logger.info(
                "MFT soft-mask preset %r (%s): init_score %g, temperature %g.",
                preset, why, peft_config.init_score, peft_config.temperature,
            )
        if peft_config.target_modules is not None:
            return peft_config
        is_vlm = "vision_config" in model_config
        model_type = model_config.get("model_type")
        if model_type not in self.target_module_mapping:
            self._generic_rule_model_type = str(model_type)  # inject_adapter warns with what the rule masked
        if peft_config.targets is not None:
            peft_config.target_modules = targets_regex(peft_config.targets, language_model_only=is_vlm)
            return peft_config
        default = self.target_module_mapping.get(model_type)
        if default is None:
            default = targets_regex("both", language_model_only=is_vlm)
        peft_config.target_modules = default if isinstance(default, str) else set(default)
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config: MFTConfig, key: str):
        """PEFT's matching, plus: nothing in a vision tower, and `layers_to_transform` also for regex targets."""
        if is_vision_tower_module(key):
            return False
        match = check_target_module_exists(peft_config, key)
        if match and isinstance(peft_config.target_modules, str) and peft_config.layers_to_transform is not None:
            index = layer_index(key, peft_config.layers_pattern)
            if index is not None:
                layers = peft_config.layers_to_transform
                return index in layers if isinstance(layers, list) else index == layers
        return match

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        """PEFT's injection; a model type MFT does not know gets the generic rule and a warning listing what it
        masked."""
        try:
            super().inject_adapter(model, adapter_name, **kwargs)
            warn_about_unmaskable_parts(model)
            if getattr(self, "_generic_rule_model_type", None) is not None:
                masked = [name for name, module in model.named_modules() if isinstance(module, MFTLayer)]
                warnings.warn(
                    f"MFT does not know the projections of model type {self._generic_rule_model_type!r}; the generic "
                    f"rule (language-model attention/MLP projections by name, plus the projector) masked "
                    f"{len(masked)} modules: {describe_masked(masked)}. Check that this is what you want, or pass "
                    "MFTConfig(target_modules=[...]) to choose.",
                    stacklevel=2,
                )
        except NoMatchingPeftModuleError as exc:
            linear_names = [
                name
                for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and not is_vision_tower_module(name)
            ]
            raise NoMatchingPeftModuleError(
                f"{exc} MFT masks nn.Linear layers outside the vision tower; this model has {len(linear_names)}, "
                f"e.g. {linear_names[:6]}."
            ) from exc

    def _create_and_replace(
        self, mft_config: MFTConfig, adapter_name, target, target_name, parent, current_key, **optional_kwargs
    ):
        if is_projector(current_key) and not isinstance(target, (MFTLayer, nn.Linear)):
            # a projector module that holds linears (LLaVA's `multi_modal_projector`): the name rule also matches
            # Mllama's, which is itself one linear; here the linears inside are matched one by one instead
            return
        if isinstance(target, MFTLayer):
            target.update_layer(adapter_name, mft_config)
            return
        kwargs = get_quantization_kwargs(self)
        new_module = self._create_new_module(mft_config, adapter_name, target, current_key, **kwargs)
        if adapter_name not in self.active_adapters:
            # an additional adapter is not trainable until it is activated
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(mft_config: MFTConfig, adapter_name, target, current_key="", **kwargs):
        base_layer = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        backend = resolve_quantization_backend(base_layer, **kwargs)
        if isinstance(backend, ForwardOnlyQuantizationBackend):
            raise TypeError(
                f"Module {current_key!r} is a {backend.backend_name} quantized layer, which can run forward only; MFT "
                "multiplies the weight element-wise and needs it dequantized. Load the model in float16/bfloat16 "
                "or with bitsandbytes 4-bit/8-bit instead."
            )
        if not isinstance(base_layer, nn.Linear) and (backend is None or backend.layer_type != "linear"):
            raise TypeError(
                f"Module {current_key!r} is a {type(base_layer).__name__}; MFT masks only torch.nn.Linear layers "
                "(and their bitsandbytes-quantized forms). Adjust `target_modules`."
            )
        return Linear(target, adapter_name, config=mft_config, **kwargs)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's contract: `autocast_adapter_dtype=False` keeps adapter weights in the base dtype (TRL asks for it
        under DeepSpeed ZeRO-3). Scores are created float32; here they follow a bf16/fp16 base, with a warning."""
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        if autocast_adapter_dtype:
            return
        dtypes = {
            module.cast_scores_to_base_dtype(adapter_name)
            for module in self.model.modules()
            if isinstance(module, MFTLayer)
        } - {None}
        if dtypes:
            names = ", ".join(sorted(str(dtype).removeprefix("torch.") for dtype in dtypes))
            self.peft_config[adapter_name].scores_dtype = names
            warnings.warn(
                f"autocast_adapter_dtype=False: the scores of MFT adapter {adapter_name!r} are kept in the base dtype "
                f"({names}). 16-bit scores cannot hold small updates (bf16 spacing is 0.0156 at a score of 3.0 and "
                "0.031 at 7.0, so an update of 0.005 leaves 3.0 unchanged) and masks learn coarsely or not at all; "
                "keep autocast_adapter_dtype=True (float32 scores) unless one dtype is required.",
                stacklevel=2,
            )

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Entered by every `PeftModel` forward. The first training passes watch that the masks move
        (`peft_mft.progress_guard`: a learning rate too small for the scores warns once).

        Mixed-adapter batches, as in PEFT's LoRA: `model(..., adapter_names=[...])` / `generate(...)` gives row i
        the adapter `adapter_names[i]` ("__base__": no adapter). Inference only; refused while training or merged."""
        if self.training and torch.is_grad_enabled():
            if not hasattr(self, "_progress_guard"):
                self._progress_guard = MaskProgressGuard()
            self._progress_guard.observe(self.model)
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        if not isinstance(adapter_names, (list, tuple)):
            raise TypeError(f"Got adapter names of type {type(adapter_names)}, expected a list of str.")
        known = {name for module in self.model.modules() if isinstance(module, MFTLayer) for name in module.mft_scores}
        unknown = {name for name in adapter_names if name != "__base__"} - known
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        num_beams = kwargs.get("num_beams")
        if isinstance(num_beams, int) and num_beams > 1:
            # beam search repeats every input num_beams times
            adapter_names = [name for name in adapter_names for _ in range(num_beams)]
        hook = functools.partial(_adapter_names_pre_forward_hook, adapter_names=list(adapter_names))
        handles = [
            module.register_forward_pre_hook(hook, with_kwargs=True)
            for module in self.model.modules()
            if isinstance(module, MFTLayer)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _check_merge_allowed(self) -> None:
        """Merging into quantized layers is refused up front, naming the first such layer."""
        super()._check_merge_allowed()
        for name, module in self.model.named_modules():
            if isinstance(module, MFTLayer) and module.quantization_backend is not None:
                raise quantized_merge_error(module.quantization_backend.backend_name, name)

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """PEFT's `merge_adapter`; NaN/inf scores are always refused first, naming the module."""
        check_finite_scores(self.model, adapter_names or self.active_adapters, action="merge")
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: Optional[list[str]] = None
    ) -> nn.Module:
        """PEFT's `merge_and_unload`; NaN/inf scores are always refused first, naming the module."""
        check_finite_scores(self.model, adapter_names or self.active_adapters, action="merge")
        return super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """PEFT's selection of what `save_pretrained` writes; NaN/inf scores are refused, naming the module."""
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        check_finite_state_dict(selected, action=f"save MFT adapter {adapter_name!r}")
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """PEFT's key remapping, then `check_scores_fit_model`: an adapter for another base model (module and both
        shapes), missing scores or NaN/inf scores are refused before anything is loaded."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_scores_fit_model(model, config, adapter_name, remapped)
        return remapped
