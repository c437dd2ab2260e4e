# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""What fine-tuning costs a model outside its task, measured on text only:

- `next_token_divergence`: on a fixed text sample, the mean per-token KL divergence KL(base || tuned) of the
  next-token distributions (nats per token; 0 for the untouched model), and the tuned and base perplexities;
- `question_accuracy`: on text-only questions the base model answers right, the share the tuned model still answers
  (the reference answer appears as whole words in its greedy reply).

Both take the base model as a separate `LlavaForConditionalGeneration` (or any causal LM) with the same tokenizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import Record, VLMProcessor
from .evaluation import evaluate_vqa, normalize_answer


@torch.no_grad()
def next_token_divergence(model, base, tokenizer, texts: list[str], max_tokens: int = 128,
                          batch_size: int = 8) -> dict:
    """{"kl_per_token", "perplexity", "base_perplexity", "tokens"} over `texts` (each cut to `max_tokens` tokens;
    every position predicting a real next token counts once)."""
    model.eval()
    base.eval()
    kl_sum = nll_sum = base_nll_sum = 0.0
    tokens = 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_tokens, add_special_tokens=False)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
        base_logp = F.log_softmax(base(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
        counted = (mask[:, 1:] * mask[:, :-1]).bool()  # a real token predicting a real next token
        target = ids[:, 1:].unsqueeze(-1)
        kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
        kl_sum += kl[counted].sum().item()
        nll_sum -= logp.gather(-1, target).squeeze(-1)[counted].sum().item()
        base_nll_sum -= base_logp.gather(-1, target).squeeze(-1)[counted].sum().item()
        tokens += int(counted.sum())
    return {"kl_per_token": kl_sum / tokens, "perplexity": math.exp(nll_sum / tokens),
            "base_perplexity": math.exp(base_nll_sum / tokens), "tokens": tokens}


def answered(prediction: str, answers: list[str]) -> bool:
    """True when one of `answers` appears as whole words in `prediction` (both normalised)."""
    text = f" {normalize_answer(prediction)} "
    return any(f" {normalize_answer(answer)} " in text for answer in answers)


def question_records(questions: list[dict]) -> list[Record]:
    """Text-only records, one question each ({"question", "answers"}; the first answer is the reference)."""
    return [Record(index=n, id=f"text-{n}", image=None,
                   turns=[("user", q["question"]), ("assistant", q["answers"][0])], source="text questions")
            for n, q in enumerate(questions)]


def question_accuracy(model, processor: VLMProcessor, questions: list[dict], max_new_tokens: int = 16) -> dict:
    """{"accuracy", "correct", "total", "answers_correct"} of `model` on text-only `questions`, judged by `answered`;
    "answers_correct" is one character per question, "1" or "0"."""
    evaluation = evaluate_vqa(model, processor, question_records(questions), max_new_tokens=max_new_tokens,
                              desc="text questions", disable_tqdm=True)
    by_id = {p["id"]: p["prediction"] for p in evaluation["predictions"]}
    right = [answered(by_id[f"text-{n}"], q["answers"]) for n, q in enumerate(questions)]
    return {"accuracy": sum(right) / len(right), "correct": sum(right), "total": len(right),
            "answers_correct": "".join("1" if r else "0" for r in right)}
