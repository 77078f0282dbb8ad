"""Whole data sets: ``embgrad run`` over jsonl / csv / parquet files into Parquet shards.

Importing this package imports nothing heavy; pyarrow, tqdm (extra ``embgrad[data]``) and Ray
(extra ``embgrad[ray]``) are imported when a run starts. Python entry point::

    from embgrad.data import RunConfig, run
    summary = run(RunConfig(data="corpus.jsonl", text_column="text", out="attr/"))

Layout of ``out`` (see ``outdir``): ``manifest.json`` (the command, to refuse a different one),
``data/*.parquet`` (one row per explained input row), ``errors.jsonl`` (one line per bad row),
``.state/`` (internal: temp files, per-shard error pieces, Ray staging).
"""

from __future__ import annotations

from .config import RunConfig, RunSummary
from .run import run

__all__ = ["RunConfig", "RunSummary", "run"]
