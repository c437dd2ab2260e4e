# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The package users install: a wheel and an sdist that install into a fresh environment and run the README usage
block from outside the source tree."""

import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import peft_mft


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# What the sdist is made from; the build runs on a copy, so it writes nothing (build/, *.egg-info) into the checkout.
PACKAGE_FILES = ("peft_mft", "peft_mft_cli.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """`python -m build` (sdist and wheel; no isolation: the build needs nothing this environment lacks)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out),
                    str(source)], check=True, capture_output=True)
    return out


def test_the_wheel_and_sdist_hold_the_package_with_its_type_marker(dist):
    (wheel,) = dist.glob("peft_mft-*.whl")
    (sdist,) = dist.glob("peft_mft-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "peft_mft/py.typed" in names and "peft_mft/mask.py" in names and "peft_mft/tools/cli.py" in names
    assert "peft_mft_cli.py" in names  # the command line's parser, outside the package so --help imports no torch
    assert not [n for n in names if n.startswith(("tests/", "harness/", "examples/", "benchmarks/"))]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert f"Version: {peft_mft.__version__}" in metadata
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("peft_mft/py.typed") for n in archive.getnames())


def test_the_installed_wheel_runs_the_readme_usage_block(dist, tmp_path):
    """A fresh venv that sees this environment's dependencies (torch, peft, transformers) but not the source tree: a
    .pth line adds this environment's site-packages after the venv's own (whose .pth files, such as an editable
    install's, are not processed there)."""
    (wheel,) = dist.glob("peft_mft-*.whl")
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    usage = README.read_text().split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    script = tmp_path / "usage.py"
    script.write_text(code + "\nimport peft_mft\nprint(peft_mft.__file__, peft_mft.__version__)\n")
    run = subprocess.run([str(python), str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    location, installed_version = run.stdout.split()[-2:]
    assert str(env) in location and installed_version == peft_mft.__version__
    assert (tmp_path / "mft-adapter" / "adapter_model.safetensors").is_file()
    command = subprocess.run([str(env / "bin" / "peft-mft"), "--version"], capture_output=True, text=True)
    assert command.returncode == 0 and command.stdout.strip() == f"peft-mft {peft_mft.__version__}", command.stderr
