"""Everything a run checks before any work, shared by the local and the Ray engines.

Order: the input file and its columns, the output folder's manifest (a different command is
refused), then the model is loaded and tried on the first good rows (a wrong model path, an
unknown method or a bad option stops here). Nothing is written until all of these pass.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from ..errors import EmbgradError, InputError, MissingExtraError
from .badrows import Columns, InputRow
from .batch import explain_rows
from .config import ExplainerFactory, ExplainerLike, RunConfig
from .outdir import OutDir
from .readers import Source
from .writer import OUTPUT_FORMAT

#: how many good rows the preflight tries (one success is enough)
PREFLIGHT_ROWS = 3


@dataclass
class Prepared:
    """A checked run: its input, output folder, row count and fingerprint."""

    config: RunConfig
    source: Source
    out: OutDir
    total: int
    fingerprint: dict[str, Any]
    started: float

    @property
    def n_shards(self) -> int:
        return -(-self.total // self.config.rows_per_shard)

    def shard_rows(self, shard: int) -> int:
        size = self.config.rows_per_shard
        return max(0, min(size, self.total - shard * size))


def columns_of(config: RunConfig) -> Columns:
    return Columns(
        config.text_column,
        config.pair_column,
        config.label_column,
        config.id_column,
        config.continuation_column,
    )


def fingerprint(config: RunConfig, source: Source) -> dict[str, Any]:
    """What must not change between a run and its resumption (JSON-normalised).

    The engine, batch size and Ray settings are not part of it: both engines write the same
    rows, so a run started locally can be finished on Ray and the other way round.
    """
    fp = {
        "data": source.fingerprint(),
        "columns": [config.text_column, config.pair_column, config.label_column, config.id_column]
        + ([config.continuation_column] if config.continuation_column is not None else []),
        "model": config.model,
        "framework": config.framework,
        "method": config.method,
        "options": dict(config.options),
        "hotflip_k": config.hotflip_k,
        "rows_per_shard": config.rows_per_shard,
        "output_format": OUTPUT_FORMAT,
    }
    if config.candidate_labels is not None:
        fp["labels"] = list(config.candidate_labels)
    normalised: dict[str, Any] = json.loads(json.dumps(fp))
    return normalised


def check_method(config: RunConfig) -> None:
    """An unknown method or option is an InputError (from the method registry)."""
    from ..methods import get_method

    get_method(config.method).validate(dict(config.options))


def load_explainer(config: RunConfig, factory: ExplainerFactory) -> ExplainerLike:
    """``factory(model, framework)``; any failure becomes one clear InputError."""
    try:
        return factory(config.model, config.framework)
    except MissingExtraError:
        raise
    except Exception as exc:  # transformers / OSError / user factories: one message
        shown = config.model or "the bundled all-MiniLM-L6-v2"
        raise InputError(f"--model {shown}: cannot load it: {exc}") from exc


def preflight(explainer: ExplainerLike, source: Source, config: RunConfig) -> None:
    """Explain up to ``PREFLIGHT_ROWS`` good rows one at a time; if all fail, stop."""
    head = itertools.islice(source.rows(), 1000)
    good = [r for r in head if isinstance(r, InputRow)][:PREFLIGHT_ROWS]
    failures = []
    for row in good:
        try:
            _, errors = explain_rows(explainer, [row], config)
        except EmbgradError as exc:
            raise InputError(f"the explainer failed on row {row.row}: {exc}") from exc
        if not errors:
            return
        failures.append(errors[0])
    if failures:
        raise InputError(
            f"the explainer failed on the first {len(failures)} good rows, so the run was not "
            f"started (check --method and --option): row {failures[0].row}: "
            f"{failures[0].reason}"
        )


def prepare(config: RunConfig, factory: ExplainerFactory) -> tuple[Prepared, ExplainerLike]:
    """Check everything (see the module docstring); the loaded explainer is returned too."""
    started = time.perf_counter()
    source = Source(config.data, columns_of(config))
    source.check_columns()
    total = source.count()
    if total == 0:
        raise InputError(f"--data {str(source.path)!r} has no rows")
    out = OutDir(config.out)
    fp = fingerprint(config, source)
    out.check(fp)
    check_method(config)
    explainer = load_explainer(config, factory)
    preflight(explainer, source, config)
    return Prepared(config, source, out, total, fp, started), explainer


def begin(prep: Prepared, command: str | None) -> set[int]:
    """Under the folder lock: write the manifest, recover, and return the shards done."""
    prep.out.check(prep.fingerprint)
    description = {"command": command, "config": prep.config.described(), "total_rows": prep.total}
    prep.out.create(prep.fingerprint, description)
    prep.out.recover()
    return {s for s in prep.out.done() if s < prep.n_shards}
