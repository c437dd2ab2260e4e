# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Adding the `MFT` member to PEFT's closed `PeftType` enum.

`peft.utils.register_peft_method` only accepts names that already exist in `PeftType`, and much of PEFT calls
`config.peft_type.value`, so a plain string is not enough: the enum needs a real member. We add one at import time
without touching PEFT's files.
"""

from __future__ import annotations

from peft.utils import PeftType


def add_peft_type_member(value: str) -> PeftType:
    """Return `PeftType[value]`, creating the member first if PEFT does not know it.

    Idempotent: a second call returns the same member. The new member behaves like the built-in ones
    (`PeftType(value)`, `PeftType.<value>`, `.value`, `.name`, membership in `list(PeftType)`, JSON as a string).
    """
    existing = PeftType._value2member_map_.get(value)
    if existing is not None:
        return existing
    member = str.__new__(PeftType, value)
    member._name_ = value
    member._value_ = value
    member.__objclass__ = PeftType
    # Order matters: `EnumType.__setattr__` refuses to rebind names that are already in `_member_map_`.
    type.__setattr__(PeftType, value, member)
    PeftType._member_map_[value] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(value)
    return member
