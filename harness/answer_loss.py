# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The training loss with the LM head computed at answer positions only.

A causal LM's loss reads its logits only where the next token is an answer token (labels != -100 after the shift),
yet the model projects every position onto the vocabulary, forward and backward. On easy-vqa batches that is ~55 of
~720 positions (batch 8), each a 576 x 49,216 product for SmolLM2. `AnswerLogitsCollator` adds transformers'
boolean ``logits_to_keep`` (B, L), so that the model returns logits (N_kept, V) for those positions only, and
`answer_logits_loss` is the Trainer's ``compute_loss_func`` for them: the model's own cross-entropy (fp32 logits,
summed over answer tokens, divided by their count or by ``num_items_in_batch`` under gradient accumulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX, LlavaCollator


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) labels -> (B, L) targets: the label of position t + 1 at position t, IGNORE_INDEX at the end."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) labels -> (B, L) bool ``logits_to_keep``: True where the next token is an answer token."""
    return next_token_targets(labels) != IGNORE_INDEX


@dataclass
class AnswerLogitsCollator:
    """`LlavaCollator`'s batch plus ``logits_to_keep``: (B, L) bool, True where the next token is an answer token."""

    collator: LlavaCollator

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        batch["logits_to_keep"] = answer_positions(batch["labels"])
        return batch


def answer_logits_loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
                       ) -> torch.Tensor:
    """Cross-entropy of ``outputs.logits`` (N_kept, V), computed at `AnswerLogitsCollator`'s positions, against
    the answer tokens of ``labels`` (B, L); a scalar."""
    targets = next_token_targets(labels)
    targets = targets[targets != IGNORE_INDEX]
    logits = outputs.logits
    if logits.dim() != 2 or logits.shape[0] != targets.numel():
        raise ValueError(f"answer_logits_loss: logits of shape {tuple(logits.shape)} for {targets.numel()} answer "
                         "tokens; the model must take a boolean (B, L) logits_to_keep and return (N_kept, V) logits")
    loss = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return loss / (count.to(loss.device) if torch.is_tensor(count) else count)
