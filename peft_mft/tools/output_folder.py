# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Output folders of the commands that write one (`harden`, `merge`, `export`): nothing of the user's is ever lost.

The rule, for the CLI and the Python functions behind it alike:
- the output may not equal, contain or lie inside an input folder (writing there could replace the input);
- a non-empty output must be an earlier output of the same command, recognised by the marker file
  `.peft-mft-output.json` that every run leaves; anything else needs `overwrite=True` (`--overwrite`);
- only what that earlier run wrote is replaced or removed; every other entry of the folder is kept. With
  `overwrite=True` the files the command writes replace same-named ones, the files an earlier `peft-mft` command
  wrote there (its marker lists them) go, and nothing else is touched;
- the result is one command's output, whole: a file that defines a model or adapter (`DEFINING_FILES`) that this
  command does not write may not stay beside its files (an `adapter_model.safetensors` beside another command's
  `adapter_config.json` would load as a model nobody saved), and a folder that changes while the command runs (another
  command writing it) is not replaced. Either refusal leaves the folder as it was.
The folder is written atomically (`peft_mft.atomic.atomic_directory`): a crash leaves its previous content intact.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..atomic import PathLike, atomic_directory
from ..errors import MFTInputError


OUTPUT_MARKER_NAME = ".peft-mft-output.json"
# Names (or name prefixes) of the files that say what a folder loads as: a PEFT adapter, a compact adapter, a model.
DEFINING_FILES = ("adapter_config.json", "adapter_model", "mft_compact", "config.json", "model.safetensors",
                  "model-", "pytorch_model")

# What a folder held when a command checked it: None (absent), else (entry name, modification time in ns) pairs.
FolderSnapshot = Optional[tuple[tuple[str, int], ...]]


def snapshot(folder: PathLike) -> FolderSnapshot:
    """`folder`'s top-level entries and their modification times, or None where it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return tuple(sorted((entry.name, entry.lstat().st_mtime_ns) for entry in folder.iterdir()))


def first_unwritable(folder: Path) -> Optional[Path]:
    """The folder that writing `folder` atomically would need to change but may not: its nearest existing parent
    (the new folder is renamed into it), and where `folder` exists, it and every folder inside it (its earlier content
    is removed); None when all are writable."""
    existing_parent = next(parent for parent in folder.absolute().parents if parent.exists())
    if not folder.is_dir():
        return None if os.access(existing_parent, os.W_OK | os.X_OK) else existing_parent
    candidates = [folder.absolute().parent, folder]
    candidates += [Path(root) / name for root, names, _ in os.walk(folder) for name in names]
    return next((path for path in candidates if not os.access(path, os.W_OK | os.X_OK)), None)


def is_defining_file(name: str) -> bool:
    return any(name == defining or name.startswith(defining) for defining in DEFINING_FILES)


class OutputFolderError(MFTInputError):
    """An output folder that a command refuses to write, because writing it could lose data; names the conflict."""


def written_by(folder: PathLike) -> tuple[str | None, list[str]]:
    """(command, top-level entries it wrote) from `folder`'s marker; (None, []) where there is none or it is
    unreadable."""
    marker = Path(folder) / OUTPUT_MARKER_NAME
    try:
        record = json.loads(marker.read_text())
        return str(record["command"]), [str(name) for name in record["entries"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None, []


def relation_to_input(output: PathLike, source: PathLike) -> str | None:
    """How `output` stands to the input `source` ("is the input", "contains the input", "lies inside the input"),
    symlinks resolved; None when they are apart."""
    resolved, source_resolved = Path(output).resolve(), Path(source).resolve()
    if resolved == source_resolved:
        return "is the input"
    if resolved in source_resolved.parents:
        return "contains the input"
    if source_resolved in resolved.parents:
        return "lies inside the input"
    return None


def check_output_folder(
    output: PathLike, inputs: Sequence[PathLike], command: str, overwrite: bool = False
) -> FolderSnapshot:
    """Raise `OutputFolderError` (one line naming both paths or the folder) when `command` may not write `output`.

    `inputs`: the folders the command reads. See the module docstring for the rule. Returns the folder's `snapshot`,
    for `command_output` to tell whether it changed meanwhile.
    """
    out = Path(output)
    for source in inputs:
        relation = relation_to_input(out, source)
        if relation is None:
            continue
        raise OutputFolderError(
            f"output {str(output)!r} {relation} {str(source)!r}; writing it could replace the input. Choose an output "
            "folder outside every input."
        )
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output {str(output)!r} is a file, not a folder; choose a folder path.")
    blocking = next((parent for parent in out.absolute().parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise OutputFolderError(
            f"output {str(output)!r} cannot be created: {str(blocking)!r} is a file, not a folder."
        )
    unwritable = first_unwritable(out)
    if unwritable is not None:
        raise OutputFolderError(
            f"output {str(output)!r} cannot be written: {str(unwritable)!r} is not writable, so its earlier content "
            "could not be replaced. Make it writable or choose another folder."
        )
    if out.is_dir() and any(out.iterdir()) and written_by(out)[0] != command and not overwrite:
        raise OutputFolderError(
            f"output folder {str(output)!r} is not empty and is not an earlier output of `peft-mft {command}`; choose "
            "a new or empty folder, or pass --overwrite (overwrite=True) to write into it (same-named files are "
            "replaced, every other file is kept)."
        )
    return snapshot(out)


@contextlib.contextmanager
def command_output(
    output: PathLike, inputs: Sequence[PathLike], command: str, overwrite: bool = False,
    checked: FolderSnapshot | str = "now",
) -> Iterator[Path]:
    """Check `output` (`check_output_folder`), then yield a staging folder that replaces it atomically on exit.

    Entries that an earlier `peft-mft` command wrote there (`command` itself, or any with `overwrite`) and this run
    does not write again are removed; every other entry is kept. The marker recording this run's entries is added
    last. `checked`: the `snapshot` that the caller's own earlier `check_output_folder` returned, so that a change
    since then (not only during the write) is refused; "now" takes it here.
    """
    def refuse_if_changed(expected: FolderSnapshot) -> None:
        if snapshot(output) != expected:
            raise OutputFolderError(
                f"output folder {str(output)!r} changed while `peft-mft {command}` ran (another command writing "
                "it?); it was left as it is now. Run the command again, one at a time per output folder."
            )

    if not isinstance(checked, str):
        refuse_if_changed(checked)
    expected = check_output_folder(output, inputs, command, overwrite)
    previous_command, previous_entries = written_by(output)
    earlier_output = set(previous_entries) if previous_command == command or overwrite else set()
    with atomic_directory(output, discard=earlier_output) as staging:
        yield staging
        entries = sorted(entry.name for entry in staging.iterdir())
        (staging / OUTPUT_MARKER_NAME).write_text(json.dumps({"command": command, "entries": entries}, indent=1))
        refuse_if_changed(expected)
        kept = [name for name, _ in expected or () if name not in entries and name not in earlier_output]
        mixed = sorted(name for name in kept if is_defining_file(name))
        if mixed:
            raise OutputFolderError(
                f"output folder {str(output)!r} holds {mixed}, which `peft-mft {command}` does not write; kept beside "
                f"its files {entries} they would make a folder that loads as a model nobody saved. It was left as it "
                "is; choose a new folder or remove those files."
            )
