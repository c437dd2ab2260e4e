# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Output files a command writes at a path the user names (`peft-mft analyze --plot OUT.png`, the scripts' `--json`
and report files): nothing of the user's is ever lost.

The rule, the single-file case of `peft_mft.tools.output_folder`'s:
- an output may not be a folder, an input file, or an existing file inside an input folder (writing it could
  replace what the command reads);
- an existing output is replaced only when it is an earlier output of the same command, recognised by its content
  (`is_earlier_output`: a PNG tagged by `png_metadata`, a JSON report holding the command's fields), or with
  `overwrite=True` (`--overwrite`) where the command offers it.
Files written together from one result (a JSON report with its Markdown table and PNG) are checked as a set: the
first one identifies the earlier output, and its companions count as that output's when it does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..atomic import PathLike
from ..errors import MFTInputError
from .output_folder import relation_to_input


Recogniser = Callable[[Path], bool]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SOFTWARE_KEY = "Software"  # the tEXt keyword matplotlib fills with its own name unless told otherwise


class OutputFileError(MFTInputError):
    """An output file that a command refuses to write, because writing it could lose data; names the path."""


def png_metadata(command: str) -> dict[str, str]:
    """`savefig(..., metadata=...)` for a PNG that `png_written_by(command)` recognises later."""
    return {_PNG_SOFTWARE_KEY: command}


def png_text(path: PathLike) -> dict[str, str]:
    """The tEXt chunks (keyword -> text, Latin-1) of a PNG file before its image data; {} if not a readable PNG."""
    chunks = {}
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return {}
            while True:
                header = f.read(8)
                if len(header) < 8:
                    return chunks
                length, kind = int.from_bytes(header[:4], "big"), header[4:]
                if kind in (b"IDAT", b"IEND"):
                    return chunks
                data = f.read(length)
                f.seek(4, os.SEEK_CUR)  # CRC
                if kind == b"tEXt" and b"\0" in data:
                    key, _, text = data.partition(b"\0")
                    chunks[key.decode("latin-1")] = text.decode("latin-1")
    except OSError:
        return {}


def png_written_by(command: str) -> Recogniser:
    """Recognises a PNG that `command` wrote with `png_metadata(command)`."""
    return lambda path: png_text(path).get(_PNG_SOFTWARE_KEY) == command


def json_report_with(*keys: str, **values) -> Recogniser:
    """Recognises a JSON object that holds every one of `keys` and each `values` item (the fields a command's report
    always has)."""

    def recognise(path: Path) -> bool:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return False
        return (isinstance(data, dict) and all(key in data for key in keys)
                and all(data.get(key) == value for key, value in values.items()))

    return recognise


def text_starting_with(prefix: str) -> Recogniser:
    """Recognises a text file (a command's Markdown table) whose first characters are `prefix`."""

    def recognise(path: Path) -> bool:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read(len(prefix)) == prefix
        except OSError:
            return False

    return recognise


def check_output_files(
    outputs: Sequence[PathLike],
    command: str,
    is_earlier_output: Recogniser,
    inputs: Sequence[PathLike] = (),
    overwrite: bool = False,
    option: Optional[str] = "--overwrite",
) -> None:
    """Raise `OutputFileError` (one line naming the path) when `command` may not write the files `outputs`.

    `outputs[0]` identifies an earlier output of `command` (`is_earlier_output(path)`); the others are written from
    the same result. `inputs`: the files and folders the command reads. `option`: how the user passes `overwrite`
    (None where the command has no such option). See the module docstring for the rule.
    """
    paths = [Path(output) for output in outputs]
    for path in paths:
        if path.is_dir():
            raise OutputFileError(f"output {str(path)!r} is a folder, not a file; choose a file path.")
        for source in inputs:
            relation = relation_to_input(path, source)
            # a new file inside an input folder replaces nothing; an existing one there is the input's
            if relation == "is the input" or (relation == "lies inside the input" and path.exists()):
                shown = "the input" if relation == "is the input" else "a file of the input"
                raise OutputFileError(
                    f"output {str(path)!r} is {shown} {str(source)!r}; writing it would replace what {command} "
                    "reads. Choose a path outside the input."
                )
    existing = [path for path in paths if path.exists()]
    if not existing or overwrite or is_earlier_output(paths[0]):
        return
    remedy = f", or pass {option} to replace it" if option else ""
    raise OutputFileError(
        f"output {str(existing[0])!r} exists and is not an earlier output of {command}; choose another path{remedy}."
    )
