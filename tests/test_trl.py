# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""TRL's SFTTrainer with MFT, on a full-precision and on a bitsandbytes 4-bit base (tiny model, CPU).

TRL 1.16 casts every trainable parameter of a quantized model to bf16 after wrapping it (the QLoRA recipe for LoRA
weights); `Float32ScoresCallback` gives MFT its float32 scores back before the first step."""

import pytest
import torch
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from peft_mft import Float32ScoresCallback, MFTConfig, MFTLayer


trl = pytest.importorskip("trl")
pytest.importorskip("bitsandbytes")
from datasets import Dataset  # noqa: E402  (trl's own dependency)

from tests.examples.tiny import make_tokenizer  # noqa: E402


TEXTS = ["what color is the shape ? red", "what color is the shape ? blue", "is there a circle in the image ? yes",
         "is there a rectangle in the image ? no"] * 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama and its tokenizer, saved as a model folder (bitsandbytes quantizes while loading one)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=((len(tokenizer) + 7) // 8) * 8, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _load(folder, quantized):
    kwargs = {}
    if quantized:
        kwargs = dict(quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                             bnb_4bit_compute_dtype=torch.float32),
                      device_map={"": "cpu"})
    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)


def _trainer(folder, tmp_path, quantized, callbacks):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4,
                     lr_scheduler_type="constant", logging_steps=1,  # TRL's default learning rate
                     save_strategy="no", report_to="none", use_cpu=True, bf16=False, max_length=32)
    return SFTTrainer(model=_load(folder, quantized), args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                      processing_class=make_tokenizer(),
                      peft_config=MFTConfig(targets="both", init_score=3.0, temperature=0.5), callbacks=callbacks)


def _scores(model):
    return {n: p for n, p in model.named_parameters() if "mft_scores" in n}


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32-base", "4bit-base"])
def test_sft_trainer_trains_float32_scores_and_nothing_else(checkpoint, tmp_path, quantized):
    trainer = _trainer(checkpoint, tmp_path, quantized, callbacks=[Float32ScoresCallback()])
    model = trainer.model
    assert any(isinstance(m, MFTLayer) for m in model.modules())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {p.dtype for p in _scores(model).values()} == {torch.float32}
    assert all(torch.all(p == 0.0) for p in _scores(model).values())  # the exact initial scores: S = 3.0 at P = 0
    trainer.train()
    after = dict(model.named_parameters())
    assert {p.dtype for p in _scores(model).values()} == {torch.float32}
    assert all(torch.equal(after[n], before[n]) for n in before if "mft_scores" not in n)  # base untouched
    moved = [n for n in _scores(model) if not torch.equal(after[n], before[n])]
    assert len(moved) == len(_scores(model))
    model.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "adapter" / "adapter_model.safetensors").values()} == {torch.float32}


def test_without_the_callback_trl_leaves_bf16_scores_on_a_4bit_base(checkpoint, tmp_path):
    """Why the callback exists (TRL 1.16): if this starts failing, TRL no longer casts and the callback is a no-op."""
    trainer = _trainer(checkpoint, tmp_path, quantized=True, callbacks=[])
    assert {p.dtype for p in _scores(trainer.model).values()} == {torch.bfloat16}


def test_the_example_script_runs_the_recipe(checkpoint, tmp_path):
    import json

    from examples.trl_sft import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    main(["--model", str(checkpoint), "--data", str(data), "--max-steps", "2", "--batch-size", "4", "--max-length",
          "32", "--output-dir", str(tmp_path / "adapter")])
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # a model folder whose name matches no preset family: the fallback preset, written into the saved config
    resolved = (saved["peft_type"], saved["preset"], saved["init_score"], saved["temperature"])
    assert resolved == ("MFT", "tinyllama-1.1b", 3.0, 0.5)


# A chat template that renders TRL's vision-language messages (content as a list of image and text parts) with the
# tiny checkpoint's tokens; LlavaProcessor also needs the patch size to count image tokens (16x16 image, 8x8 patches,
# CLIP's class token dropped).
VLM_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32-base", "4bit-language-model"])
def test_vision_language_sft_trains_only_scores_including_the_projectors(tmp_path, quantized):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    from tests.examples.tiny import COLORS, make_dataset, save_tiny_llava

    folder = save_tiny_llava(tmp_path / "llava")
    make_dataset(tmp_path / "data")
    images = sorted((tmp_path / "data" / "images").glob("*.png"))
    colors = list(COLORS)
    dataset = Dataset.from_dict({
        "messages": [[{"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": "what color is the shape ?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": colors[i % len(colors)]}]}]
                     for i in range(len(images))],
        "images": [[Image.open(path).convert("RGB")] for path in images],
    })
    kwargs = {}
    if quantized:
        kwargs = dict(quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"]), device_map={"": "cpu"})
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, **kwargs)
    processor = AutoProcessor.from_pretrained(folder)
    processor.patch_size, processor.num_additional_image_tokens = 8, 1
    processor.vision_feature_select_strategy, processor.chat_template = "default", VLM_TEMPLATE
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2,
                     save_strategy="no", report_to="none", use_cpu=True, bf16=False, max_length=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         peft_config=MFTConfig(targets="both", init_score=3.0, temperature=0.5),
                         callbacks=[Float32ScoresCallback()])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("mft_scores" in n for n in changed)
    assert any("multi_modal_projector" in n for n in changed) and not any("vision_tower" in n for n in changed)
    assert {p.dtype for n, p in after.items() if "mft_scores" in n} == {torch.float32}


def test_sft_trainer_on_a_4bit_base_needs_no_callback_for_float32_scores(checkpoint, tmp_path):
    """TRL casts the trainable parameters of a quantized model to bf16; the layers give the scores their float32
    values back before their first forward, so the plain SFTTrainer recipe trains float32 scores."""
    trainer = _trainer(checkpoint, tmp_path, True, callbacks=[])
    trainer.train()
    scores = _scores(trainer.model)
    assert {p.dtype for p in scores.values()} == {torch.float32}
    assert any(not torch.all(p == 0.0) for p in scores.values())  # they trained
