# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Writing a folder atomically: a crash at any moment leaves either its previous content or the new one.

Generic file-system code (no PEFT, no torch): a staging folder beside the target, flushed to disk, swapped in with one
rename (Linux `renameat2(RENAME_EXCHANGE)`, else two renames). Used by `peft_mft.save_adapter`, the CLI's writers and
`peft_mft.training.trainer.AtomicCheckpointTrainer`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Collection, Iterator, Union


PathLike = Union[str, os.PathLike]  # a path as the library accepts it everywhere

STAGING_MARKER = ".saving-"



def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0))
    except OSError:  # directories cannot be opened on Windows; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` (and `root` itself) to disk, deepest first."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _carry_over_other_entries(previous: Path, staging: Path, discard: Collection[str]) -> None:
    """Hard-link (or copy) into `staging` whatever `previous` holds that the new save did not write, such as a
    tokenizer saved in the same folder or a `.git` folder, so that replacing the folder loses nothing but the replaced
    files and the entries named in `discard`."""
    for entry in previous.iterdir():
        destination = staging / entry.name
        if entry.name in discard or destination.exists() or os.path.lexists(destination):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, destination, copy_function=_link_or_copy, symlinks=True)
        else:
            _link_or_copy(str(entry), str(destination))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def replace_directory(staging: Path, target: Path) -> None:
    """Put `staging` in place of `target` atomically and remove what `target` held before."""
    if not target.exists():
        os.rename(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the previous content
    else:
        # Two renames: if the process dies between them, the previous folder is intact under `previous`.
        previous = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:8]}")
        os.rename(target, previous)
        os.rename(staging, target)
        shutil.rmtree(previous)
    _fsync(target.parent)


@contextlib.contextmanager
def atomic_directory(directory: PathLike, discard: Collection[str] = ()) -> Iterator[Path]:
    """Write a folder atomically: yields an empty staging folder beside `directory`; on normal exit it replaces
    `directory` in one rename (created if absent). On an exception, or if the process dies, `directory` is untouched
    (a killed process may leave the hidden staging folder `.<name>.saving-<id>` behind; delete it at leisure).

    Entries already in `directory` that the new content does not replace (a tokenizer, other adapters' subfolders,
    hidden files) are hard-linked into the new folder, so nothing but the rewritten files changes; `discard` names
    top-level entries of the previous content to drop instead (files an earlier run of the same writer made and this
    one no longer writes, such as shards of a different count).

    Args:
        directory: The folder to write; a symbolic link is followed and kept.
        discard: Top-level entries of the previous content not to carry over.
    """
    target = Path(directory).resolve()  # through a symlink: replace the folder it points to, keep the link
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}{STAGING_MARKER}{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        if target.is_dir():
            _carry_over_other_entries(target, staging, discard)
        fsync_tree(staging)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Write one file atomically: yields a staging path beside `path` to write to; on normal exit the file is flushed
    to disk and renamed over `path` (created if absent). On an exception `path` is untouched and the staging file
    removed.

    Args:
        path: The file to write.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}{STAGING_MARKER}{uuid.uuid4().hex[:8]}")
    try:
        yield staging
        _fsync(staging)
        os.replace(staging, target)
        _fsync(target.parent)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
