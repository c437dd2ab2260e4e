# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The errors peft_mft raises for bad input, so that callers (the CLI's exit code 2) can tell them from bugs.

Every message names the problem: the file, module, shape or value, and what to do.
"""

from __future__ import annotations


class MFTInputError(ValueError):
    """Bad input to peft_mft: a folder, file, argument or value that cannot be used as given."""


class AdapterFileError(MFTInputError):
    """An adapter folder or file that cannot be loaded; the message names the file and what is wrong with it."""


class NonFiniteScoresError(MFTInputError):
    """MFT scores hold NaN or inf; the message names the modules."""

    @classmethod
    def of_adapter(cls, modules: list[str], action: str, source: str = "") -> "NonFiniteScoresError":
        """The refusal to `action` ("load MFT adapter 'default'") an adapter whose scores of `modules` hold NaN/inf;
        `source` (' (in <file>)') says where they were read."""
        return cls(
            f"Cannot {action}: the MFT scores of {describe_modules(modules)}{source} hold NaN or inf; the adapter is "
            "broken (diverged training or a corrupted file). Use an earlier checkpoint."
        )


class QuantizedMergeError(TypeError):
    """Merging MFT masks into a quantized layer, which MFT refuses: re-quantizing `W * M` is lossy."""


def describe_modules(modules: list[str], limit: int = 5) -> str:
    """Module names for an error message: the first `limit`, quoted, then how many more."""
    shown = ", ".join(repr(name) for name in modules[:limit])
    more = f" and {len(modules) - limit} more" if len(modules) > limit else ""
    return f"{shown}{more}"
