"""`python -m peft_mft ...` is the `peft-mft` command line."""

import sys

from .cli import main

sys.exit(main())
