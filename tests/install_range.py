# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Run the tuner's core tests against other PEFT and transformers versions (`make install-range`).

    python tests/install_range.py                                   # the bounds setup.cfg allows
    python tests/install_range.py --pair 0.19.0:5.2.0 --pair 0.21.2:5.25.0

For each (peft, transformers) pair: a throwaway venv under a temporary folder that sees this environment's packages
(torch, bitsandbytes, ...) through a .pth line placed after its own site-packages, the pinned PEFT and transformers
installed into it (so they shadow this environment's), and `CORE_TESTS` run there against this checkout. Prints one
line per pair and exits non-zero if a pair failed; nothing outside the temporary folder is written.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
CORE_TESTS = ["tests/test_config.py", "tests/test_model.py", "tests/test_mask.py", "tests/test_presets.py",
              "tests/test_score_scale.py", "tests/test_hard_threshold_cache.py", "tests/test_adapter_integrity.py",
              "tests/test_transformers_adapter_api.py"]


def allowed_bounds() -> list[tuple[str, str]]:
    """(peft, transformers) at the lower bounds of setup.cfg's ranges, and at the newest releases in them."""
    text = (ROOT / "setup.cfg").read_text()
    names = ("peft", "transformers")
    lower = {name: re.search(rf"^\s*{name}>=([\d.]+)", text, re.M).group(1) for name in names}
    upper = {name: re.search(rf"^\s*{name}>=[\d.]+,<([\d.]+)", text, re.M).group(1) for name in names}
    newest = {name: f"{name}<{upper[name]}" for name in names}
    return [(f"peft=={lower['peft']}", f"transformers=={lower['transformers']}"),
            (newest["peft"], newest["transformers"])]


def check(peft: str, transformers: str, folder: Path) -> tuple[bool, str]:
    """Install `peft` and `transformers` (pip requirement strings) into a venv in `folder` and run the core tests;
    (passed, summary line)."""
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "zz-parent-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", peft, transformers],
                             capture_output=True, text=True)
    if install.returncode:
        return False, f"install failed: {install.stderr.strip().splitlines()[-1:]}"
    versions = subprocess.run([str(python), "-c", "import peft, transformers, peft_mft; print(peft.__version__, "
                               "transformers.__version__)"], capture_output=True, text=True, cwd=ROOT)
    if versions.returncode:
        return False, f"{peft}, {transformers}: import failed: {versions.stderr.strip().splitlines()[-1]}"
    installed = versions.stdout.split()
    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_TESTS],
                           capture_output=True, text=True, cwd=ROOT)
    summary = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-300:]
    return tests.returncode == 0, f"peft {installed[0]}, transformers {installed[1]}: {summary}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", action="append", metavar="PEFT:TRANSFORMERS",
                        help="versions to check, e.g. 0.19.0:5.2.0 (default: setup.cfg's bounds)")
    args = parser.parse_args(argv)
    pairs = ([(f"peft=={p.split(':')[0]}", f"transformers=={p.split(':')[1]}") for p in args.pair] if args.pair
             else allowed_bounds())
    failed = 0
    for peft, transformers in pairs:
        start = time.time()
        with tempfile.TemporaryDirectory(prefix="peft-mft-range-") as folder:
            passed, line = check(peft, transformers, Path(folder))
        failed += not passed
        print(f"{'PASS' if passed else 'FAIL'} {line} ({time.time() - start:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
