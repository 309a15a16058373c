"""``python -m ally_core ARGS...``: the ``ally`` command (its console script's entry)."""

import sys

from .quick_run import main

sys.exit(main())
