# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""examples/llava/train.py, the self-contained recipe: it trains, evaluates, saves and merges a LLaVA model, and it
imports nothing of this repository but peft_mft."""

import ast
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoProcessor, LlavaForConditionalGeneration

from examples.llava import train as recipe

from .tiny import make_dataset, save_tiny_hf_llava


SCRIPT = Path(recipe.__file__)
ALLOWED = {"argparse", "json", "pathlib", "__future__", "torch", "peft", "PIL", "transformers", "peft_mft"}


def test_the_recipe_imports_only_peft_mft_its_dependencies_and_the_standard_library():
    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
    assert imported <= ALLOWED, imported - ALLOWED
    assert len(SCRIPT.read_text().splitlines()) <= 220


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    return {"model": save_tiny_hf_llava(root / "model"), **make_dataset(root / "data"), "images": root / "data"}


def test_labels_cover_the_answers_and_their_end_of_turn_only(tiny):
    processor = AutoProcessor.from_pretrained(tiny["model"])
    record = recipe.read_records(tiny["train"], tiny["images"])[0]
    example = recipe.encode(processor, record, max_length=512)
    labelled = example["labels"] != recipe.IGNORE_INDEX
    assert torch.equal(example["input_ids"][labelled], example["labels"][labelled])
    text = processor.tokenizer.decode(example["labels"][labelled])
    answers = [answer for _, answer in record["turns"]]
    assert text.split() == [word for answer in answers for word in (answer, "<|im_end|>")]
    assert example["pixel_values"].shape[-2:] == (16, 16)


def test_the_recipe_trains_evaluates_saves_and_merges(tiny, tmp_path):
    out = tmp_path / "out"
    result = recipe.main(["--model", str(tiny["model"]), "--data", str(tiny["train"]), "--image-folder",
                          str(tiny["images"]), "--eval-data", str(tiny["test"]), "--output-dir", str(out),
                          "--max-steps", "4", "--batch-size", "2"])  # Trainer's default rate, 5e-5
    assert 0.0 <= result["accuracy"] <= 1.0 and result["merged_accuracy"] == result["accuracy"]
    assert result["train_loss"] > 0
    ids = torch.tensor([[5, 6, 7, 8]])
    base = LlavaForConditionalGeneration.from_pretrained(tiny["model"])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        adapter = PeftModel.from_pretrained(base, out / "adapter")  # wraps `base` in place
        merged = LlavaForConditionalGeneration.from_pretrained(out / "merged")
        torch.testing.assert_close(adapter(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(before, merged(input_ids=ids).logits)  # the masks moved
    assert AutoProcessor.from_pretrained(out / "merged").tokenizer.pad_token == "<pad>"
