# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Report files the examples and benchmarks write at paths the user names (`--json`, `--out`): checked before the long
part by the rule of `peft_mft.tools.output_file` (new, or an earlier report of the same script), and refused as an
argparse error (exit 2, one line naming the path)."""

from __future__ import annotations

import argparse
from typing import Sequence

from peft_mft.tools.output_file import OutputFileError, PathLike, Recogniser, check_output_files


def check_report_files(parser: argparse.ArgumentParser, option: str, outputs: Sequence[PathLike], command: str,
                       is_earlier_report: Recogniser) -> None:
    """`parser.error` unless `command` may write `outputs` (the first one identifies an earlier report; the others,
    such as its Markdown table and PNG, are written from it). `option`: the argument that named them."""
    try:
        check_output_files(outputs, command, is_earlier_report, option=None)
    except OutputFileError as exc:
        parser.error(f"{option}: {exc}")
