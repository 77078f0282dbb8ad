"""``embgrad run`` with the stand-in explainer, as a separate process (for kill -9 tests)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_fakes import make_fake
from embgrad.data.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], explainer_factory=make_fake))
