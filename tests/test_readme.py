# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The README's usage example runs as written: the training flow, then loading the adapter in a new process."""

import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def usage_blocks() -> list[str]:
    usage = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", usage, re.S)


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    train, load = usage_blocks()[:2]
    assert len(train.strip().splitlines()) <= 14
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(train, "README.md", "exec"), namespace)
    assert (tmp_path / "mft-adapter" / "adapter_model.safetensors").exists()
    assert type(namespace["merged"]).__name__ == "LlamaForCausalLM"
    check = "\nassert type(model).__name__ == 'PeftModelForCausalLM'\n"
    result = subprocess.run([sys.executable, "-c", load + check], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
