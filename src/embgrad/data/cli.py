"""``embgrad run``: explain every row of a data file into Parquet shards.

``embgrad.cli`` registers the command with :func:`add_parser`; ``python -m embgrad.data.cli``
runs it alone. Importing this module imports neither pyarrow nor Ray.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from .._cliargs import add_label_args, add_method_args, check_method_args, labels_of
from ..errors import EmbgradError
from ..models.load import FRAMEWORKS
from .config import ENGINES, ExplainerFactory, RunConfig

DESCRIPTION = """\
Explain every row of a data file (.jsonl, .csv, .tsv or .parquet) and write the per-token
scores, the per-sample word-table gradient norm, the explained value and the top HotFlip
substitutions to
Parquet shards in OUT/data/, readable with no custom code:

  pandas.read_parquet("OUT/data")    polars.read_parquet("OUT/data/*.parquet")
  duckdb.sql("SELECT * FROM 'OUT/data/*.parquet'")

The method, its options, the model, what "value" is (key "quantity") and embgrad's version
are in each file's metadata (key "embgrad"). Each output row carries "row", the input row's
0-based index (blank lines skipped), and "id": --id-column's value as a string, else the
input's own "id" column (as a string) when it has one, else the row index.

Resumable: a run that is stopped or killed (even kill -9) is finished by running the same
command again; every input row ends up exactly once in OUT/data or in OUT/errors.jsonl. Ctrl-C
or SIGTERM saves the rows done so far (locally also every minute). A run resumes only on the
same input bytes (SHA-256 of the whole file) and the same model weights (SHA-256 of the model
folder's files, or of a module: model's parameters); a different command, input or model into
the same OUT is refused (the engine and batch size may change: a run started locally can be
finished with --engine ray). Committed shards are checked on every start; a damaged one is
redone. With --engine ray each shard is committed as soon as all its rows are in; the rows
of a shard not complete when a Ray job is stopped are redone. See docs/data-runs.md.

What is explained: with --pair-column, each pair's cosine similarity; on a sentence encoder
(the bundled model) without one, log p(label | text) zero-shot among --labels (default
positive,negative), for --label-column's label or the predicted one; on a classifier, log p of
--label-column's class or the predicted one.

Bad rows do not stop the run: an empty text, a missing value, bytes that are not UTF-8 or a row
the explainer rejects is written to OUT/errors.jsonl with its row, id and reason. Texts longer
than the model's limit are truncated to it and written with truncated=true. A missing column,
a wrong --model or an unknown method stops the run before anything is written (exit code 1).
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_generation_columns(group: Any) -> None:
    """``--continuation-column``: generation runs (HF causal / seq2seq LMs, ``--model hf:``)."""
    group.add_argument(
        "--continuation-column", metavar="NAME",
        help="a forced continuation of each text (an HF causal or seq2seq LM): each row gets "
        "the matrix of its continuation's tokens x input tokens and per-step scores",
    )  # fmt: skip


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run`` on an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "run",
        help="explain every row of a jsonl/csv/parquet file into Parquet shards (resumable)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument(
        "--data", required=True, metavar="FILE", help="the .jsonl/.csv/.tsv/.parquet file"
    )
    io.add_argument(
        "--text-column",
        required=True,
        metavar="C",
        help="the column to explain (texts past the model's limit are truncated, flagged "
        "truncated=true)",
    )
    io.add_argument(
        "--pair-column",
        metavar="P",
        help="a second text per row: the pair's similarity is explained",
    )
    io.add_argument(
        "--label-column", metavar="L", help="each row's target class (a label name or class index)"
    )
    io.add_argument(
        "--id-column",
        metavar="I",
        help="written as 'id' (as text); default: the input's own 'id' column if it has one, "
        "else the row's index in the file",
    )
    io.add_argument("--out", required=True, metavar="DIR", help="the output folder")
    _add_generation_columns(io)
    m = p.add_argument_group("model and method")
    m.add_argument(
        "--model",
        metavar="SPEC",
        default=None,
        help="hf:PATH or module:pkg.mod:factory (default: the bundled all-MiniLM-L6-v2); a "
        "module: spec imports that module and runs its factory, by design (only name code you "
        "trust); code inside an hf: folder is never run",
    )
    m.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    add_method_args(m)
    add_label_args(m)
    r = p.add_argument_group("execution")
    r.add_argument(
        "--batch-size",
        type=_positive,
        default=16,
        metavar="N",
        help="rows per explain call (default: 16)",
    )
    r.add_argument(
        "--rows-per-shard",
        type=_positive,
        default=1000,
        metavar="N",
        help="input rows per output shard, the unit of resumption (default: 1000)",
    )
    r.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process; ray: Ray Data with an actor pool (pip install 'embgrad[ray]')",
    )
    r.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this Ray cluster (--engine ray; default: start a local one); --data "
        "and --out must then be paths every node can reach (a shared filesystem)",
    )
    r.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="Ray actors, one model each (--engine ray; default: 2)",
    )
    p.set_defaults(func=run_command)
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` of parsed ``run`` arguments (InputError for bad labels or
    options: checked here, before any data is read or model loaded)."""
    labels = labels_of(args)
    check_method_args(args.method, dict(args.option), args.hotflip_k)
    return RunConfig(
        data=args.data,
        text_column=args.text_column,
        out=args.out,
        pair_column=args.pair_column,
        label_column=args.label_column,
        id_column=args.id_column if args.id_column is not None else _own_id_column(args),
        model=args.model,
        framework=args.framework,
        method=args.method,
        hotflip_k=args.hotflip_k,
        options=dict(args.option),
        candidate_labels=None if labels is None else tuple(labels),
        batch_size=args.batch_size,
        rows_per_shard=args.rows_per_shard,
        engine=args.engine,
        ray_address=args.ray_address,
        workers=args.workers,
        continuation_column=getattr(args, "continuation_column", None),
    )


def _own_id_column(args: argparse.Namespace) -> str | None:
    """``"id"`` when the input file has a column of that name (other than the texts): kept as
    the output's ``id``, as Ray Data's ``map_batches`` and HF ``datasets.map`` keep columns."""
    from .badrows import Columns
    from .readers import Source

    used = {args.text_column, args.pair_column, args.label_column, args.continuation_column}
    if "id" in used:
        return None
    try:
        have, _ = Source(args.data, Columns(args.text_column, None, None, None)).available_columns()
    except EmbgradError:  # no such file, unknown format: the run's own checks say so
        return None
    return "id" if "id" in have else None


def command_line(config: RunConfig) -> str:
    """The ``embgrad run`` command that resumes ``config`` (for the manifest)."""
    words = ["embgrad", "run", "--data", str(config.data), "--text-column", config.text_column]
    flags = {
        "--pair-column": config.pair_column,
        "--label-column": config.label_column,
        "--id-column": config.id_column,
        "--continuation-column": config.continuation_column,
        "--out": str(config.out),
        "--model": config.model,
        "--framework": config.framework if config.framework != "torch" else None,
        "--method": config.method,
        "--hotflip-k": str(config.hotflip_k),
        "--rows-per-shard": str(config.rows_per_shard),
        "--engine": config.engine,
        "--labels-file": None,
    }
    for flag, value in flags.items():
        if value is not None:
            words += [flag, value]
    if config.candidate_labels is not None:
        if any("," in x for x in config.candidate_labels):
            words += ["--labels-file", "LABELS.txt"]  # one label a line (labels with commas)
        else:
            words += ["--labels", ",".join(config.candidate_labels)]
    for key, value in config.options.items():
        words += ["-O", f"{key}={value!r}"]
    return shlex.join(words)


def run_command(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser | None = None,
    *,
    explainer_factory: ExplainerFactory | None = None,
) -> int:
    """Run the parsed command (``parser`` is unused: ``embgrad.cli`` passes it to every
    command); print the summary; 0 on success, 1 on an embgrad error, 130 if interrupted."""
    from .run import run

    try:
        config = config_from_args(args)
        summary = run(config, explainer_factory=explainer_factory, command=command_line(config))
    except EmbgradError as exc:
        print(f"embgrad run: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        saved = f": {exc}" if getattr(exc, "saved", None) is not None else ""
        print(
            f"embgrad run: interrupted{saved}; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(summary.format())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A parser with only ``run`` (for ``python -m embgrad.data.cli``)."""
    parser = argparse.ArgumentParser(prog="embgrad")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(
    argv: Sequence[str] | None = None, *, explainer_factory: ExplainerFactory | None = None
) -> int:
    """``embgrad run ...`` alone; ``explainer_factory`` replaces ``Explainer.from_spec``."""
    args = build_parser().parse_args(argv)
    return run_command(args, explainer_factory=explainer_factory)


if __name__ == "__main__":
    sys.exit(main())
