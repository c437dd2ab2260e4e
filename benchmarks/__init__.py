# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Benchmarks of peft-mft: run as `python -m benchmarks.<name>` from the repository root."""
