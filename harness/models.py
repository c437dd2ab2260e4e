# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Loading a `LlavaForConditionalGeneration` checkpoint (local folder or Hub id) with what is needed to feed it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, BitsAndBytesConfig, LlavaForConditionalGeneration

from . import vision_efficientnet  # noqa: F401  (registers the EfficientNet-Lite vision tower)
from .data import VLMProcessor
from .images import ImagePreprocessor, _read_optional_json


# Never quantised / never masked / never LoRA-adapted: the vision side, and the output head.
VISION_MODULES = ("vision_tower",)
# transformers 5 matches these from the start of the module name, as regexes, or as suffixes.
QLORA_SKIP_MODULES = [
    "vision_tower",
    "multi_modal_projector",
    "lm_head",
    r".*\.vision_tower",
    r".*\.multi_modal_projector",
]


@dataclass
class LoadedVLM:
    model: LlavaForConditionalGeneration
    tokenizer: object
    image_preprocessor: ImagePreprocessor
    chat_template: str | None
    source: str

    def processor(self, max_length: int | None = None) -> VLMProcessor:
        return VLMProcessor(
            self.tokenizer,
            self.image_preprocessor,
            image_token_id=self.model.config.image_token_id,
            num_image_tokens=count_image_tokens(self.model, self.image_preprocessor),
            chat_template=self.chat_template,
            max_length=max_length,
        )


def load_chat_template(source: str, tokenizer, override: str | None = None) -> str | None:
    """The chat template: ``override`` (a file), the tokenizer's, or the processor's chat_template.jinja/json."""
    if override:
        return Path(override).read_text()
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    if Path(source).is_dir() and (Path(source) / "chat_template.jinja").is_file():
        return (Path(source) / "chat_template.jinja").read_text()
    data = _read_optional_json(source, "chat_template.json")
    return data.get("chat_template") if data else None


def load_llava(
    source: str,
    *,
    quantize_4bit: bool = False,
    dtype: torch.dtype = torch.float32,
    chat_template: str | None = None,
    device_map=None,
) -> LoadedVLM:
    """Load a LLaVA checkpoint. ``quantize_4bit`` loads the language model in bitsandbytes NF4 (QLoRA); the
    vision tower, projector and LM head stay in ``dtype``."""
    config = AutoConfig.from_pretrained(source)
    if config.model_type != "llava":
        hint = (
            " (use examples/tinyllava/train.py for TinyLLaVA checkpoints)" if config.model_type == "tinyllava" else ""
        )
        raise ValueError(f"{source} is a {config.model_type!r} checkpoint; this loader takes model_type 'llava'{hint}")
    kwargs = {}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=QLORA_SKIP_MODULES,
        )
        if device_map is None:  # bitsandbytes quantizes while loading, so the weights go to their device now
            if torch.cuda.is_available():
                from accelerate import PartialState

                device_map = {"": PartialState().local_process_index}
            else:
                device_map = {"": "cpu"}
    model = LlavaForConditionalGeneration.from_pretrained(source, dtype=dtype, device_map=device_map, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = load_chat_template(source, tokenizer, chat_template)
    preprocessor = ImagePreprocessor.for_checkpoint(source, config.vision_config)
    return LoadedVLM(model, tokenizer, preprocessor, template, source)


@torch.no_grad()
def count_image_tokens(model, preprocessor: ImagePreprocessor) -> int:
    """Number of image tokens the model puts in the sequence for one image (one vision-tower forward)."""
    from PIL import Image

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    pixel = preprocessor(Image.new("RGB", (preprocessor.width, preprocessor.height), (127, 127, 127)))[None]
    param = next(base.model.vision_tower.parameters())
    features = base.model.get_image_features(pixel_values=pixel.to(param.device, param.dtype))
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    return int(features[0].shape[0])
