# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Tiny random models built from configs in code (no downloads)."""

import os

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import peft_mft  # noqa: F401  (registers the MFT PEFT type)


os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 64
IMAGE_TOKEN_ID = VOCAB - 1


def _text_config_kwargs():
    return dict(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def llama_config(**overrides) -> LlamaConfig:
    """The tiny Llama's config (16 wide, 2 layers, vocabulary `VOCAB`), with `overrides`."""
    return LlamaConfig(**(_text_config_kwargs() | overrides))


def make_llama(num_hidden_layers: int = 2, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A random tiny Llama in eval mode; `overrides` change its config (e.g. `intermediate_size=24` for a model an
    adapter of the default one does not fit)."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(num_hidden_layers=num_hidden_layers, **overrides)).eval()


def make_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**_text_config_kwargs())).eval()


def make_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    config = LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**_text_config_kwargs()), image_token_id=IMAGE_TOKEN_ID
    )
    return LlavaForConditionalGeneration(config).eval()


def llava_inputs(batch: int = 2, seed: int = 0) -> dict:
    """Inputs for `make_llava`: 4 image tokens (2x2 patches of a 16x16 image) and 6 text tokens per sample."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(3, IMAGE_TOKEN_ID, (batch, 6), generator=gen)
    image_tokens = torch.full((batch, 4), IMAGE_TOKEN_ID)
    input_ids = torch.cat([text[:, :1], image_tokens, text[:, 1:]], dim=1)
    pixel_values = torch.randn(batch, 3, 16, 16, generator=gen)
    return {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": torch.ones_like(input_ids)}


def text_inputs(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=gen)
