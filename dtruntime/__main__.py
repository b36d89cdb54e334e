"""``python -m dtruntime``: the command-line interface (see :mod:`dtruntime.cli`)."""

import sys

from .cli import main

sys.exit(main())
