# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""harness.answer_loss: the LM head at answer positions only gives the model's own loss and gradients."""

from __future__ import annotations

import pytest
import torch

from harness.answer_loss import AnswerLogitsCollator, answer_logits_loss
from harness.data import LlavaCollator, LlavaDataset, load_llava_json
from harness.methods import MethodArgs, prepare_model
from harness.models import load_llava

from .tiny import make_dataset, save_tiny_llava


pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("answer_loss")
    data = make_dataset(root / "data")
    return save_tiny_llava(root / "llava"), data, root / "data"


def _batch(loaded, data, image_folder):
    records = load_llava_json(data["train"], image_folder, limit=4)
    processor = loaded.processor()
    dataset = LlavaDataset(records, processor)
    collate = AnswerLogitsCollator(LlavaCollator(processor.tokenizer.pad_token_id))
    return collate([dataset[i] for i in range(len(records))])


def _loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["mft", "lora", "full"])
@pytest.mark.parametrize("num_items", [None, 37])
def test_answer_logits_give_the_models_own_loss_and_gradients(tiny, method, num_items):
    folder, data, image_folder = tiny
    loaded = load_llava(str(folder))
    batch = _batch(loaded, data, image_folder)
    torch.manual_seed(0)
    model = prepare_model(loaded.model, method, MethodArgs(lora_dropout=0.0)).model  # two forwards, same function
    model.train()
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    plain = {k: v for k, v in batch.items() if k != "logits_to_keep"}
    kept_rows = []

    def own(m):
        return m(**plain, **extra).loss

    def answers_only(m):
        outputs = m(**{k: v for k, v in batch.items() if k != "labels"})
        kept_rows.append(outputs.logits.shape[0])
        return answer_logits_loss(outputs, batch["labels"], num_items)

    reference, reference_grads = _loss_and_grads(model, own)
    loss, grads = _loss_and_grads(model, answers_only)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert grads.keys() == reference_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    # the head ran on the answer positions only: far fewer rows than the batch has positions
    answer_tokens = int((batch["labels"] != -100).sum())
    assert kept_rows == [answer_tokens] and answer_tokens < batch["input_ids"].numel() / 4


def test_logits_at_every_position_are_refused_with_their_shape(tiny):
    folder, data, image_folder = tiny
    loaded = load_llava(str(folder))
    batch = _batch(loaded, data, image_folder)
    with torch.no_grad():
        outputs = loaded.model(**{k: v for k, v in batch.items() if k not in ("labels", "logits_to_keep")})
    with pytest.raises(ValueError, match=r"logits of shape \(4, \d+, \d+\) for \d+ answer tokens"):
        answer_logits_loss(outputs, batch["labels"])
