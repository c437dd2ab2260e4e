"""`python -m peft_mft ...` is the `peft-mft` command line."""

import sys

from .tools.cli import main


sys.exit(main())
