"""``python -m embgrad``: the ``embgrad`` command line."""

import sys

from .cli import main

sys.exit(main())
