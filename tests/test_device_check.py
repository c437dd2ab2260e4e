# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""benchmarks/device_check.sh on a machine without CUDA: its arguments, its dry run and its refusal to pretend."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.sh"


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})


def test_dry_run_lists_the_three_checks_with_the_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    run = _run("--dry-run", "--model", str(tmp_path), "--out", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 3 and "tests/test_cuda.py" in lines[0] and "benchmarks.masked_linear" in lines[1]
    assert "benchmarks.train_step --device cuda" in lines[2] and f"--model {tmp_path}" in lines[2]
    assert all(str(tmp_path / "out") in line for line in lines[1:])


@pytest.mark.parametrize("args, message", [
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--model"], "--model needs a folder"),
    (["--model", "/no/such/folder"], "not a model folder"),
])
def test_bad_arguments_are_named(args, message):
    run = _run(*args)
    assert run.returncode == 64 and message in run.stderr


def test_help_describes_the_script():
    run = _run("--help")
    assert run.returncode == 0 and "Without a CUDA device it runs nothing" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would really run")
def test_without_cuda_nothing_is_checked_and_the_exit_status_says_so(tmp_path):
    run = _run("--out", str(tmp_path / "out"))
    assert run.returncode == 2 and "nothing was checked" in run.stderr
    assert not (tmp_path / "out").exists()  # it created nothing
