# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""harness.forgetting and examples.forgetting on tiny models: the divergence is 0 for the untouched model and
positive once weights change, the perplexity is the exponent of the model's own mean loss, answers are matched as
whole words, and a run's measurement is appended once."""

import json
import math

import pytest
import torch
from peft import get_peft_model
from transformers import LlavaForConditionalGeneration

import examples.forgetting as forgetting
from harness.forgetting import answered, next_token_divergence
from harness.models import load_llava
from peft_mft import MFTConfig

from .tiny import make_dataset, save_tiny_llava


pytestmark = pytest.mark.filterwarnings("ignore")
TEXTS = ["what color is the shape ? red", "is there a circle in the image ? yes . A blue rectangle"]


@pytest.fixture
def tiny(tmp_path):
    make_dataset(tmp_path / "data")
    return save_tiny_llava(tmp_path / "model")


def test_divergence_is_zero_for_the_base_and_positive_after_a_change(tiny):
    loaded = load_llava(str(tiny))
    base = LlavaForConditionalGeneration.from_pretrained(tiny)
    same = next_token_divergence(loaded.model, base, loaded.tokenizer, TEXTS)
    assert same["kl_per_token"] == pytest.approx(0.0, abs=1e-8) and same["perplexity"] == same["base_perplexity"]
    # the perplexity of one unpadded text is exp of the model's own mean next-token loss
    ids = loaded.tokenizer(TEXTS[:1], return_tensors="pt", add_special_tokens=False).input_ids
    loss = base(input_ids=ids, labels=ids).loss.item()
    one = next_token_divergence(loaded.model, base, loaded.tokenizer, TEXTS[:1])
    assert one["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5) and one["tokens"] == ids.shape[1] - 1
    torch.manual_seed(0)
    changed = get_peft_model(loaded.model, MFTConfig(init_score=3.0, temperature=0.5, init_weights=False))
    moved = next_token_divergence(changed, base, loaded.tokenizer, TEXTS)
    assert moved["kl_per_token"] > 1e-6 and moved["base_perplexity"] == same["base_perplexity"]


def test_answers_are_matched_as_whole_words():
    assert answered("The capital of France is Paris.", ["Paris"])
    assert answered("It has 8 legs", ["eight", "8"])
    assert not answered("Parisian food", ["Paris"]) and not answered("18", ["8"])


def test_a_runs_forgetting_is_measured_and_appended_once(tiny, tmp_path, monkeypatch):
    run = tmp_path / "run"
    torch.manual_seed(0)
    model = get_peft_model(LlavaForConditionalGeneration.from_pretrained(tiny),
                           MFTConfig(init_score=3.0, temperature=0.5, init_weights=False))
    model.save_pretrained(run / "adapter")
    sample = {"texts": TEXTS, "questions": [{"question": "what color is the shape ?", "answers": ["red"]}]}
    (tmp_path / "sample.json").write_text(json.dumps(sample))
    monkeypatch.setattr(forgetting, "embedded_llava_checkpoint", lambda: tiny)
    monkeypatch.setattr(forgetting, "SAMPLE_FILE", tmp_path / "sample.json")
    monkeypatch.setattr(forgetting, "RESULTS_FILE", tmp_path / "forgetting.jsonl")
    record = forgetting.main(["--run-dir", str(run), "--source-key", "k1"])
    assert record["kl_per_token"] > 0 and record["questions"] == 1 and record["answers_correct"] in ("0", "1")
    assert forgetting.main(["--run-dir", str(run), "--source-key", "k1"]) is None
    assert len((tmp_path / "forgetting.jsonl").read_text().splitlines()) == 1
