# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Run PEFT's own tuner tests (`tests/test_custom_models.py` of the installed PEFT release) with MFT rows
(`make peft-suite`).

    python tests/peft_suite.py            # downloads the PEFT sdist of the installed version, runs its MFT rows

PEFT checks every tuner against one behaviour matrix (`TEST_CASES`: save / load, merge, unmerge, safe merge,
disabling, deleting and switching adapters, training only the adapter, dtypes, ...). This script fetches the test
folder from the sdist of the installed PEFT version (from the package index) into a temporary folder, adds
`MFT_CASES` to `TEST_CASES`, and runs their tests there (`SELECTION`) against this checkout's peft_mft, in a venv
that adds `SUITE_REQUIREMENTS`. Nothing outside the temporary folder is written; the exit code is pytest's.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import venv
from pathlib import Path


# PEFT's toy models: "MLP" has Linear layers lin0 (10 -> 20) and lin1 (20 -> 2).
MFT_CASES = '''
    ("Vanilla MLP 1 MFT", "MLP", MFTConfig, {"target_modules": "lin0"}),
    ("Vanilla MLP 2 MFT", "MLP", MFTConfig, {"target_modules": ["lin0"]}),
    ("Vanilla MLP 3 MFT", "MLP", MFTConfig, {"target_modules": ["lin1"]}),
    ("Vanilla MLP 4 MFT", "MLP", MFTConfig, {"target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 5 MFT", "MLP", MFTConfig, {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 6 MFT hard", "MLP", MFTConfig, {"target_modules": ["lin0"], "mask_type": "hard", "sparsity": 0.2}),
    ("Vanilla MLP 7 MFT STE", "MLP", MFTConfig, {"target_modules": ["lin0", "lin1"], "straight_through": True}),
'''


def peft_tests(folder: Path) -> Path:
    """The `tests` folder of the installed PEFT version's sdist, extracted under `folder`."""
    import peft

    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    f"peft=={peft.__version__}", "--dest", str(folder)], check=True)
    (sdist,) = folder.glob("peft-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if "/tests/" in m.name]
        archive.extractall(folder, members=members, filter="data")
    return next(folder.glob("peft-*/tests"))


def add_mft_rows(tests: Path) -> None:
    """Insert `MFT_CASES` at the top of `TEST_CASES` in test_custom_models.py, importing peft_mft first."""
    path = tests / "test_custom_models.py"
    text = path.read_text()
    if "TEST_CASES = [\n" not in text:
        raise SystemExit(f"{path}: no 'TEST_CASES = [' list; this PEFT release lays its tests out differently")
    text = text.replace("TEST_CASES = [\n", "TEST_CASES = [\n" + MFT_CASES, 1)
    path.write_text("import peft_mft  # registers MFT\nfrom peft_mft import MFTConfig\n" + text)
    (tests / "__init__.py").touch()  # the tests import each other relatively


# A hard mask zeroes its `sparsity` share from the start, so a fresh H-MFT adapter is not the identity, which PEFT's
# test_disable_adapters* assume (PEFT exempts DEFT's removal-only PaRa for the same reason).
SELECTION = "MFT and not (hard and disable_adapters)"
# What PEFT's test helpers import beyond peft-mft's own test dependencies.
SUITE_REQUIREMENTS = ("diffusers", "parameterized", "scipy")


def suite_python(folder: Path) -> Path:
    """A venv in `folder` that sees this environment's packages (a .pth line after its own site-packages) and has
    `SUITE_REQUIREMENTS` installed into it."""
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "zz-parent-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *SUITE_REQUIREMENTS], check=True)
    return python


def main(argv=None) -> int:
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="peft-suite-") as folder:
        tests = peft_tests(Path(folder))
        add_mft_rows(tests)
        python = suite_python(Path(folder) / "venv")
        args = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SELECTION,
                str(tests / "test_custom_models.py"), *(argv if argv is not None else sys.argv[1:])]
        env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
        return subprocess.run(args, cwd=tests.parent, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
