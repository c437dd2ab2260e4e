# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The documentation builds offline with warnings as errors, and its API page covers every public name, each
documenting its arguments."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

from peft.config import PeftConfig

import peft_mft


ROOT = Path(__file__).resolve().parents[1]
PUBLIC = [name for name in peft_mft.__all__ if name != "__version__"]


def test_docs_build_with_warnings_as_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "api" / "index.html").is_file()


def test_the_api_page_lists_every_public_name():
    listed = re.findall(r"^::: peft_mft\.(\w+)$", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert sorted(listed) == sorted(PUBLIC)


def _documented_parameters(obj) -> tuple[list[str], str]:
    """(parameters a user passes, docstring) of a public function or class (its own __init__)."""
    if inspect.isclass(obj):
        if "__init__" not in vars(obj) and not hasattr(obj, "__dataclass_fields__"):
            return [], inspect.getdoc(obj) or ""  # the signature is a base class's (PEFT's, an exception's)
        signature = inspect.signature(obj)
    else:
        signature = inspect.signature(obj)
    peft_fields = set(getattr(PeftConfig, "__dataclass_fields__", {}))
    names = [("**" if p.kind is p.VAR_KEYWORD else "") + name for name, p in signature.parameters.items()
             if name not in peft_fields and p.kind is not p.VAR_POSITIONAL]
    return names, inspect.getdoc(obj) or ""


def test_every_public_name_documents_its_arguments():
    undocumented = {}
    for name in PUBLIC:
        parameters, doc = _documented_parameters(getattr(peft_mft, name))
        assert doc, f"{name} has no docstring"
        if not parameters:
            continue
        args = doc.split("Args:", 1)[1] if "Args:" in doc else ""
        missing = [p for p in parameters if not re.search(rf"^\s+{re.escape(p)}:", args, re.M)]
        if missing:
            undocumented[name] = missing
    assert undocumented == {}
