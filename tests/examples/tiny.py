# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Tiny random VLM checkpoints (LLaVA and TinyLLaVA layouts), a word-level tokenizer and a few generated
images, all built in code: no download, no pip-delivered pretrained part."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from harness.embedded import EMBEDDED_CHAT_TEMPLATE
from harness.images import CLIP_MEAN, CLIP_STD, ImagePreprocessor
from harness.tinyllava import TINYLLAVA_SYSTEM


SPECIALS = ["<pad>", "[UNK]", "<|im_start|>", "<|im_end|>", "<image>", "<s>"]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SHAPES = ("circle", "rectangle")
QUESTION_SUFFIX = "Answer with one word."
IMAGE_SIZE = 16


def make_tokenizer(with_bos: bool = False) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the words the tiny data uses; ``with_bos``: it adds "<s>" in front by default
    (like Llama's)."""
    text = " ".join([
        "user assistant system USER ASSISTANT : what color is the shape ? is there a in image yes no",
        QUESTION_SUFFIX, TINYLLAVA_SYSTEM, " ".join(COLORS), " ".join(SHAPES), "Describe briefly . A",
    ])
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text)))
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIALS)
    extra = {}
    if with_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                               special_tokens=[("<s>", vocab["<s>"])])
        extra["bos_token"] = "<s>"
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<pad>",
                                  unk_token="[UNK]", **extra)
    tok.chat_template = EMBEDDED_CHAT_TEMPLATE
    return tok


def _text_config(tokenizer) -> LlamaConfig:
    vocab = ((len(tokenizer) + 7) // 8) * 8
    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False)


def _vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                            image_size=IMAGE_SIZE, patch_size=8)


def save_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """A random LLaVA checkpoint: CLIP vision (16x16 image, 4 patch tokens) + 2-layer Llama, with tokenizer and
    preprocessor config."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = LlavaConfig(vision_config=_vision_config(), text_config=_text_config(tokenizer),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=4)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    preprocessor = ImagePreprocessor(height=IMAGE_SIZE, width=IMAGE_SIZE, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    preprocessor.save_pretrained(folder)
    return folder


# A chat template over typed content ({"type": "image"} / {"type": "text"}), as llava-hf processors have.
TYPED_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def save_tiny_hf_llava(folder: Path, seed: int = 0) -> Path:
    """The tiny LLaVA checkpoint with a standard `LlavaProcessor` (CLIP image processor, 4 image tokens), loadable
    with `AutoProcessor` as a llava-hf checkpoint is: what the self-contained recipe needs."""
    save_tiny_llava(folder, seed)
    (folder / "preprocessor_config.json").unlink()
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE,
                                         image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=make_tokenizer(), patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=TYPED_CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


class TinyLlavaReference(torch.nn.Module):
    """TinyLLaVA Factory's module tree (language_model, vision_tower._vision_tower, connector._connector) and its
    forward: hidden_states[-2] of the vision tower without the first token, MLP connector, spliced at the image."""

    def __init__(self, tokenizer, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.language_model = LlamaForCausalLM(_text_config(tokenizer))
        self.vision_tower = torch.nn.Module()
        self.vision_tower._vision_tower = CLIPVisionModel(_vision_config())
        self.connector = torch.nn.Module()
        self.connector._connector = torch.nn.Sequential(
            torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 64)
        )

    def forward(self, text_before: torch.Tensor, pixel_values: torch.Tensor, text_after: torch.Tensor):
        hidden = self.vision_tower._vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        image = self.connector._connector(hidden)
        embed = self.language_model.get_input_embeddings()
        inputs = torch.cat([embed(text_before), image, embed(text_after)], dim=1)
        return self.language_model(inputs_embeds=inputs).logits


def save_tiny_tinyllava(folder: Path, seed: int = 0) -> TinyLlavaReference:
    """A random TinyLLaVA Factory checkpoint (config.json, model.safetensors with TinyLLaVA names, tokenizer)."""
    tokenizer = make_tokenizer()
    reference = TinyLlavaReference(tokenizer, seed).eval()
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    text, vision = _text_config(tokenizer).to_dict(), _vision_config().to_dict()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["TinyLlavaForConditionalGeneration"], "model_type": "tinyllava",
        "llm_model_name_or_path": "", "connector_type": "mlp2x_gelu", "text_config": text, "vision_config": vision,
        "vision_feature_layer": -2, "vision_feature_select_strategy": "patch", "image_aspect_ratio": "square",
        "image_token_index": -200, "hidden_size": 64, "vocab_size": text["vocab_size"],
    }))
    tokenizer.chat_template = None  # TinyLLaVA repos carry the LLM's tokenizer, not TinyLLaVA's template
    tokenizer.save_pretrained(folder)
    return reference


def make_dataset(folder: Path, n_images: int = 6) -> dict[str, Path]:
    """Generated images of one coloured shape, with easy-vqa-like questions: train (multi-turn) and test JSON."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    names = list(COLORS)
    for i in range(n_images):
        color, shape = names[i % len(names)], SHAPES[i % len(SHAPES)]
        image = Image.new("RGB", (24, 20), (245, 245, 245))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)((4, 4, 18, 15), fill=COLORS[color])
        image.save(images / f"{i}.png")
        qa = [("what color is the shape ?", color), (f"is there a {shape} in the image ?", "yes"),
              (f"is there a {names[(i + 1) % 3]} shape ?", "no")]
        conv = []
        for k, (q, a) in enumerate(qa):
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + f"{q}\n{QUESTION_SUFFIX}"},
                     {"from": "gpt", "value": a}]
        train.append({"id": f"train-{i}", "image": f"images/{i}.png", "conversations": conv})
        test.append({"id": f"test-{i}", "image": f"images/{i}.png", "conversations": conv[:2]})
    paths = {"train": folder / "train.json", "test": folder / "test.json"}
    paths["train"].write_text(json.dumps(train))
    paths["test"].write_text(json.dumps(test))
    return paths
