"""Everything a run checks before any work, shared by the local and the Ray engines.

Order: the input file (a regular file with rows, the columns it needs, its SHA-256), the
output folder (a writable place, its manifest: a different command, input or model weights is
refused), then the model is loaded and tried on the first good rows (a wrong model path, an
unknown method or a bad option stops here). Nothing is written until all of these pass.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import EmbgradError, InputError, MissingExtraError
from ..models.load import cannot_load, files_digest, parameters_digest, spec_folder
from ._deps import require
from .badrows import Columns, InputRow
from .batch import explain_rows
from .config import ExplainerFactory, ExplainerLike, RunConfig
from .outdir import OutDir, check_writable, write_failure
from .readers import Source
from .writer import output_format, output_schema

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
    #: ids already written (``--id-column`` runs): a later row with one of them is refused
    seen_ids: dict[str, int] = field(default_factory=dict)

    def check_input(self) -> None:
        """InputError when the input file changed since it was fingerprinted (at a commit)."""
        if not self.source.unchanged():
            raise InputError(
                f"--data {str(self.source.path)!r} changed while the run was reading it; the "
                "run stopped so that no output mixes two versions of it. Write the run for the "
                "new file to a new --out folder."
            )

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
    folder = spec_folder(config.model)
    fp = {
        "data": source.fingerprint(),
        # the weight, config and tokenizer files (hf:PATH, the bundled model); module: specs'
        # parameters are added once the model is loaded (see prepare)
        "weights": {"files_sha256": files_digest(folder)} if folder is not None else None,
        "columns": [config.text_column, config.pair_column, config.label_column, config.id_column]
        + ([config.continuation_column] if config.continuation_column is not None else []),
        "model": config.model,
        "framework": config.framework,
        "method": config.method,
        "options": dict(config.options),
        "hotflip_k": config.hotflip_k,
        "rows_per_shard": config.rows_per_shard,
        "output_format": output_format(config),
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
        raise cannot_load(config.model, exc) from exc


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
        source.no_rows()
    out = OutDir(config.out)
    check_writable(out.path)
    fp = fingerprint(config, source)
    by_module = config.model is not None and config.model.startswith("module:")
    out.check(fp, ignore=("weights",) if by_module else ())
    check_method(config)
    explainer = load_explainer(config, factory)
    preflight(explainer, source, config)
    if by_module:  # the factory's code made the model: fingerprint what it made (after the
        # preflight, so that parameters whose shapes a first forward fixes exist)
        try:
            digest = parameters_digest(getattr(explainer, "model", None))
        except Exception:  # parameters that cannot be read: not fingerprinted
            digest = None
        fp["weights"] = {"parameters_sha256": digest} if digest is not None else None
        out.check(fp)
    return Prepared(config, source, out, total, fp, started), explainer


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run; ``saved`` rows of ``total`` are kept on disk."""

    def __init__(self, saved: int, total: int) -> None:
        super().__init__(f"{saved} of {total} rows are saved")
        self.saved, self.total = saved, total


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) while the run works, so the work done
    is saved; the previous handler is restored after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def begin(prep: Prepared, command: str | None, *, partial: bool = True) -> set[int]:
    """Under the folder lock: write the manifest, recover, verify the committed shards (a
    damaged one is redone, a stray file refused), and return the shards done; says on stderr
    how many rows a resumed run already has (``partial``: counting the rows saved from
    unfinished shards, which the local engine resumes from)."""
    out, config = prep.out, prep.config
    out.check(prep.fingerprint)
    description = {"command": command, "config": config.described(), "total_rows": prep.total}
    out.create(prep.fingerprint, description)
    out.recover()
    names = list(output_schema(config).names)
    for note in out.verify(prep.total, config.rows_per_shard, names):
        print(f"embgrad run: {note}", file=sys.stderr)
    done = {s for s in out.done() if s < prep.n_shards}
    if config.id_column is not None:
        prep.seen_ids.update(_written_ids(out, done))
    already = sum(prep.shard_rows(s) for s in done) + (out.partial_rows(done) if partial else 0)
    if already:
        print(
            f"embgrad run: resuming: {already} of {prep.total} rows already done",
            file=sys.stderr,
        )
    return done


def _written_ids(out: OutDir, done: set[int]) -> dict[str, int]:
    """id → row of the rows in the committed shards."""
    pq = require("pyarrow.parquet", "data", "pyarrow")
    seen: dict[str, int] = {}
    for file in sorted(out.data.glob("*.parquet")):
        table = pq.read_table(file, columns=["row", "id"])
        for row, rid in zip(
            table.column("row").to_pylist(), table.column("id").to_pylist(), strict=True
        ):
            seen.setdefault(str(rid), row)
    return seen


@contextlib.contextmanager
def writing(prep: Prepared) -> Iterator[None]:
    """Turn an OSError met while writing ``--out`` (disk full, read-only, folder gone) into an
    embgrad error that says what to do; the committed shards stay."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, EmbgradError):
            raise
        prep.out.ensure_present()  # a folder deleted under the run says so, not ENOENT
        raise write_failure(exc, prep.out.path) from exc
