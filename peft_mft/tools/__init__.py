# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Offline tools for saved MFT adapters: mask analysis and plots, model card, hardening, compact export, merging into
the base model, and the `peft-mft` command line that drives them. None is needed to train or load an adapter."""
