# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Where the examples keep what they build once (dequantized LLM, aligned projector, converted data)."""

from __future__ import annotations

import os
from pathlib import Path


CACHE_ENV = "PEFT_MFT_CACHE"


def cache_dir(*parts: str) -> Path:
    """Return (and create) ``$PEFT_MFT_CACHE/<parts>`` or ``~/.cache/peft_mft/<parts>``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "peft_mft"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
