# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Example scripts for peft-mft (importable as ``examples.*`` from the repository root)."""
