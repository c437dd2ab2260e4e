# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`python -m peft_mft ...` is the `peft-mft` command line."""

import sys

from peft_mft_cli import main


sys.exit(main())
