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
                     learning_rate=0.1, weight_decay=0.0, lr_scheduler_type="constant", logging_steps=1,
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
    assert all(torch.all(p == 3.0) for p in _scores(model).values())  # the exact initial scores
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
    assert resolved == ("MFT", "smollm2", 3.0, 0.5)
