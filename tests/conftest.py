"""Shared test set-up: offline model hubs, quiet frameworks, a private MXNet home."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# tests/shared holds the slow oracles, model builders and fakes every test folder uses
sys.path.insert(0, str(Path(__file__).resolve().parent / "shared"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MXNET_HOME", str(_ROOT / ".cache" / "mxnet"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
