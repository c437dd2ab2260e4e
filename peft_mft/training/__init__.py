# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Training helpers: the scores' optimizer, the optimizer step inside the backward, atomic Trainer checkpoints and
callbacks. Each works with `transformers.Trainer` and with hand-written loops."""
