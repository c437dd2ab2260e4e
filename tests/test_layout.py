# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The package's own structure: no module of peft_mft imports another in a cycle (deferred imports included)."""

import ast
import subprocess
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "peft_mft"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """peft_mft modules that `path` imports anywhere in its body (top level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES}
    found.discard(name)
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_module_of_peft_mft_imports_another_in_a_cycle():
    graph = {name: imports_of(path) for name, path in MODULES.items()}
    assert len(graph) > 20 and "peft_mft.config" in graph["peft_mft.layer"]  # the walker sees imports
    cycle = find_cycle(graph)
    assert cycle == [], " -> ".join(cycle)


def test_the_tuner_core_does_not_import_the_tools_or_training_helpers():
    core = ["peft_mft.config", "peft_mft.mask", "peft_mft.layer", "peft_mft.model", "peft_mft.targets"]
    for name in core:
        assert not {m for m in imports_of(MODULES[name]) if m.startswith(("peft_mft.tools", "peft_mft.training"))}
    assert imports_of(MODULES["peft_mft.mask"]) == set()  # pure tensor maths


def _imported_top_level_packages(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
    return names


def test_benchmarks_and_examples_share_the_harness_and_not_each_other():
    root = PACKAGE.parent
    assert "examples" not in _imported_top_level_packages(root / "benchmarks")
    assert "harness" in _imported_top_level_packages(root / "benchmarks")
    assert not {"examples", "benchmarks"} & _imported_top_level_packages(root / "harness")
    assert not {"examples", "benchmarks", "harness"} & _imported_top_level_packages(PACKAGE)


_IMPORT_CHECK = """
import sys
import torch
import torch.nn.modules.module as module
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

def global_hooks():
    return [len(getattr(module, name) or ()) for name in dir(module) if name.startswith("_global_") and "hook" in name]

before = global_hooks()
import peft
from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
peft_hooks = global_hooks()
import peft_mft
assert "MFT" in PEFT_TYPE_TO_TUNER_MAPPING
assert global_hooks() == peft_hooks, (before, peft_hooks, global_hooks())
assert not _global_optimizer_post_hooks and not _global_optimizer_pre_hooks
assert peft_mft.MFTConfig.save_pretrained is PeftConfig.save_pretrained  # no save hook: saving is PEFT's
tools = sorted(name for name in sys.modules if name.startswith("peft_mft.tools"))
assert not tools, tools
"""


def test_import_peft_mft_registers_the_peft_type_and_nothing_else():
    """No optimizer or module hooks for the whole process, no save hook, and the tools load only when used."""
    run = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def _self_times(argument: str) -> dict[str, int]:
    """{module: own import time in microseconds} of `python -X importtime -c argument`."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", argument], capture_output=True, text=True,
                         timeout=300, check=True)
    times = {}
    for line in run.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and fields[0].strip().isdigit():
            times[fields[2].strip()] = int(fields[0])
    return times


def test_import_peft_mft_costs_little_beyond_import_peft():
    """Measured in one process, so that the machine's load scales both: what `import peft_mft` imports beyond what
    `import peft` does takes under 10% of `import peft`'s own time."""
    peft_modules = set(_self_times("import peft"))
    times = _self_times("import peft_mft")
    extra = sum(t for name, t in times.items() if name not in peft_modules)
    peft = sum(t for name, t in times.items() if name in peft_modules)
    assert extra < 0.1 * peft, (extra, peft)


LICENCE_HEADER = "# Copyright 2026 the peft-mft authors.\n# SPDX-License-Identifier: Apache-2.0\n"


def test_every_python_file_carries_the_licence_header():
    root = PACKAGE.parent
    files = [root / "peft_mft_cli.py"] + [path for folder in ("peft_mft", "harness", "examples", "benchmarks", "tests")
                                          for path in (root / folder).rglob("*.py")]
    missing = [str(path.relative_to(root)) for path in files if not path.read_text().startswith(LICENCE_HEADER)]
    assert len(files) > 100 and not missing, missing
