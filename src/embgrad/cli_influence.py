"""``embgrad influence``: index training texts, query test texts, rank by self-influence.

``index`` writes IDX/ with ``cli.json`` (the model spec, checkpoints, weights, columns),
``examples.jsonl`` (each training example's text, partner and label, in file order) and
``index/`` (the Parquet shards of :class:`embgrad.influence.InfluenceIndex`; resumable: the
same command again finishes an interrupted index). ``query`` and ``self`` re-open it with the
same model and checkpoints (fingerprints checked) and write terminal / HTML / JSON / Parquet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._cliargs import formats
from .errors import InputError
from .models.load import FRAMEWORKS

CLI_FORMAT = "embgrad-influence-cli/1"
DEFAULT_FORMATS = ("terminal", "html")


def _formats(value: str) -> list[str]:
    from .influence.report import FORMATS  # imported when the flag is used, not at start-up

    return formats(FORMATS)(value)


def add_parser(sub: Any) -> None:
    """Register ``embgrad influence {index,query,self}``."""
    p = sub.add_parser(
        "influence",
        help="which training examples drove a prediction (TracIn-WE data influence)",
        description="TracIn-WE: influence of training texts on test texts from per-example "
        "gradients of the word-embedding table (see docs/influence.md).",
    )
    isub = p.add_subparsers(dest="influence_command", metavar="{index,query,self}")
    isub.required = True
    _add_index(isub)
    _add_query(isub)
    _add_self(isub)


def _data_args(p: argparse.ArgumentParser, *, label_help: str) -> None:
    p.add_argument("--text-column", default="text", help="column of the texts (default text)")
    p.add_argument("--pair-column", help="column of each text's partner (pair classifiers)")
    p.add_argument("--label-column", help=label_help)
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward (default 32)")


def _out_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument(
        "--format", action="append", type=_formats, metavar="FORMATS",
        help="outputs: terminal, html, json, parquet; repeatable or a comma list "
        f"(default {','.join(DEFAULT_FORMATS)})",
    )  # fmt: skip
    p.add_argument("--out", default=default_out, metavar="DIR", help=f"(default ./{default_out})")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _add_index(isub: Any) -> None:
    p = isub.add_parser("index", help="index the training examples of a data file")
    p.add_argument("--model", metavar="SPEC", required=True,
                   help="hf:PATH of a sequence classifier, or module:pkg.mod:factory")  # fmt: skip
    p.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    p.add_argument("--data", required=True, metavar="FILE", help="training data: jsonl, csv or parquet")  # fmt: skip
    _data_args(p, label_help="column of the labels (names from the model's label2id, or class "
               "indices); default: each example's predicted class")  # fmt: skip
    p.add_argument("--checkpoint", action="append", metavar="DIR",
                   help="an HF checkpoint folder of the same architecture (repeatable); the sum "
                   "runs over these instead of --model")  # fmt: skip
    p.add_argument("--weight", action="append", type=float, metavar="W",
                   help="one per --checkpoint (e.g. its learning rate; default 1)")  # fmt: skip
    p.add_argument("--top-rows", type=int, metavar="K",
                   help="keep each training example's K largest-norm rows (default: all, exact)")  # fmt: skip
    p.add_argument("--skip-special", action="store_true",
                   help="leave the tokenizer's special tokens ([CLS], [SEP]) out of both sides")  # fmt: skip
    p.add_argument("--out", required=True, metavar="IDX", help="the index folder")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: a pool of Ray actors computes the batches (PyTorch models)")  # fmt: skip
    p.add_argument("--workers", type=int, help="Ray actors (default: half the CPUs)")
    p.set_defaults(func=_run_index)


def _add_query(isub: Any) -> None:
    p = isub.add_parser("query", help="the training examples that drove test predictions")
    p.add_argument("--index", required=True, metavar="IDX")
    p.add_argument("--text", action="append", metavar="TEXT", help="a test text (repeatable)")
    p.add_argument("--pair", action="append", metavar="TEXT", help="its partner (repeatable)")
    p.add_argument("--label", action="append", metavar="LABEL",
                   help="the test label (one for all texts or one per text; default: predicted)")  # fmt: skip
    p.add_argument("--data", metavar="FILE", help="test data instead of --text")
    _data_args(p, label_help="column of the test labels (default: the predicted class)")
    p.add_argument("-k", type=int, default=10, help="proponents and opponents per text (default 10)")  # fmt: skip
    _out_args(p, "embgrad-influence")
    p.set_defaults(func=_run_query)


def _add_self(isub: Any) -> None:
    p = isub.add_parser("self", help="rank training examples by self-influence (mislabels)")
    p.add_argument("--index", required=True, metavar="IDX")
    p.add_argument("--top", type=int, default=50, help="how many to list (default 50)")
    _out_args(p, "embgrad-self-influence")
    p.set_defaults(func=_run_self)


# -- index -----------------------------------------------------------------------------------
def _atomic_text(path: Path, text: str) -> None:
    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name} must be a positive integer, got {value}")


def _run_index(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .influence import InfluenceIndex
    from .influence.texts import Predicted, TextBatches, keep_labelled, read_examples
    from .models.load import check_spec, load

    _positive("--batch-size", args.batch_size)
    _positive("--top-rows", args.top_rows)
    _positive("--workers", args.workers)
    check_spec(args.model, args.framework)
    ckpts = [str(Path(d).resolve()) for d in args.checkpoint or []]
    for d in ckpts:
        check_spec(f"hf:{d}", args.framework)
    if args.weight and len(args.weight) != len(ckpts):
        raise InputError(f"{len(args.weight)} --weight for {len(ckpts)} --checkpoint: one each")
    bad_rows: list[dict[str, Any]] = []
    ex = read_examples(
        args.data, args.text_column, args.pair_column, args.label_column, errors=bad_rows
    )
    out = Path(args.out)
    config = {
        "format": CLI_FORMAT,
        "model": args.model,
        "framework": args.framework,
        "checkpoints": ckpts,
        "weights": args.weight,
        "data": str(Path(args.data).resolve()),
        "columns": [args.text_column, args.pair_column, args.label_column],
        "top_rows": args.top_rows,
        "skip_special": args.skip_special,
    }
    old = _read_config(out, must=False)
    if old is not None and old != config:
        raise InputError(
            f"{out} holds an index built by another command; use the same command to resume "
            "it, or another --out"
        )
    if out.exists() and old is None and any(out.iterdir()):
        raise InputError(f"{out} is a non-empty folder without an index: choose another --out")
    loaded = load(args.model, framework=args.framework)
    if loaded.kind not in ("classifier", "auto"):
        raise InputError(
            f"influence needs a classifier with (B, C) logits; {args.model} loads as a "
            f"{loaded.kind} (use the API with your own loss_fn for other models)"
        )
    labels = keep_labelled(ex, loaded.model, bad_rows)
    models = [load(f"hf:{d}", framework=args.framework).model for d in ckpts]
    try:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_text(out / "cli.json", json.dumps(config, indent=1))
        lines = [
            json.dumps(
                {
                    "row": r,
                    "text": t,
                    "pair": None if ex.pairs is None else ex.pairs[k],
                    "label": None if ex.labels is None else ex.labels[k],
                },
                ensure_ascii=False,
            )
            for k, (r, t) in enumerate(zip(ex.rows, ex.texts, strict=True))
        ]
        _atomic_text(out / "examples.jsonl", "\n".join(lines) + "\n")
        bad_lines = [
            json.dumps(e, ensure_ascii=False) for e in sorted(bad_rows, key=lambda e: e["row"])
        ]
        _atomic_text(out / "errors.jsonl", "".join(f"{line}\n" for line in bad_lines))
    except OSError as e:
        raise InputError(f"cannot write the index to {out}: {e.strerror or e}") from None
    data = TextBatches(loaded, ex.texts, ex.pairs, args.batch_size, args.framework)
    idx = InfluenceIndex.build(
        loaded.model, data, None if labels is not None else Predicted(), labels=labels,
        checkpoints=models or None, weights=args.weight, top_rows=args.top_rows,
        tokenizer=loaded.tokenizer, batch_size=args.batch_size, path=out / "index",
        skip_special=True if args.skip_special else None, engine=args.engine,
        workers=args.workers,
    )  # fmt: skip
    print(f"embgrad: indexed {len(idx)} examples into {out}")
    if bad_rows:
        print(
            f"embgrad: {len(bad_rows)} bad row(s) left out, listed in {out / 'errors.jsonl'}",
            file=sys.stderr,
        )
    return 0


# -- opening an index --------------------------------------------------------------------------
def _read_config(folder: Path, *, must: bool = True) -> dict[str, Any] | None:
    f = folder / "cli.json"
    if not f.exists():
        if must:
            raise InputError(f"no influence index in {folder} (no cli.json): run `embgrad "
                             "influence index` first")  # fmt: skip
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {f}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != CLI_FORMAT:
        raise InputError(f"{f} is not an embgrad influence index description")
    return data


class _Opened:
    def __init__(self, folder: Path) -> None:
        from .influence import InfluenceIndex
        from .models.load import load
        from .tasks.heads import id2label

        cfg = _read_config(folder)
        if cfg is None:  # pragma: no cover - _read_config(must=True) raises instead
            raise InputError(f"no influence index in {folder}")
        self.config: dict[str, Any] = cfg
        self.loaded = load(cfg["model"], framework=cfg["framework"])
        models = [load(f"hf:{d}", framework=cfg["framework"]).model for d in cfg["checkpoints"]]
        self.index = InfluenceIndex.open(
            folder / "index", self.loaded.model, checkpoints=models or None,
            weights=cfg["weights"],
        )  # fmt: skip
        self.names = id2label(self.loaded.model)
        self.examples = [
            json.loads(line)
            for line in (folder / "examples.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        if len(self.examples) != len(self.index):
            raise InputError(
                f"{folder}: {len(self.examples)} examples listed for {len(self.index)} indexed"
            )

    def token(self, i: int) -> str:
        tok = self.loaded.tokenizer
        return str(tok.convert_ids_to_tokens(int(i))) if tok is not None else str(i)


def _formats_of(args: argparse.Namespace) -> list[str]:
    return [f for group in (args.format or [list(DEFAULT_FORMATS)]) for f in group]


# -- query ---------------------------------------------------------------------------------------
def _test_examples(
    args: argparse.Namespace,
) -> tuple[list[str], list[str] | None, list[Any] | None]:
    from .influence.texts import read_examples

    if (args.data is None) == (args.text is None):
        raise InputError("give test texts with --text (repeatable) or --data FILE, one of them")
    if args.data is not None:
        ex = read_examples(args.data, args.text_column, args.pair_column, args.label_column)
        return ex.texts, ex.pairs, ex.labels
    texts = list(args.text)
    if args.pair and len(args.pair) != len(texts):
        raise InputError(f"{len(args.pair)} --pair for {len(texts)} --text: one each")
    labels = args.label
    if labels and len(labels) not in (1, len(texts)):
        raise InputError(f"{len(labels)} --label for {len(texts)} --text: one, or one per text")
    if labels and len(labels) == 1:
        labels = labels * len(texts)
    return texts, args.pair, labels


def _run_query(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .influence.report import check_outputs, highlight, query_html, query_terminal, save
    from .influence.texts import Predicted, TextBatches, label_ids

    _positive("-k", args.k)
    _positive("--batch-size", args.batch_size)
    texts, pairs, raw_labels = _test_examples(args)
    formats = _formats_of(args)
    check_outputs(formats, args.out, "influence", args.overwrite)
    opened = _Opened(Path(args.index))
    model = opened.loaded.model
    labels = None if raw_labels is None else label_ids(raw_labels, model)
    predicted = Predicted()
    data = TextBatches(opened.loaded, texts, pairs, args.batch_size, opened.config["framework"])
    inf = opened.index.query(data, None if labels is not None else predicted, labels=labels)
    used = labels if labels is not None else [predicted.labels[i] for i in range(len(texts))]
    records = []
    for top in inf.top(args.k):
        i = top.test
        rec: dict[str, Any] = {
            "test": i, "text": texts[i], "pair": None if pairs is None else pairs[i],
            "label": opened.names.get(int(used[i]), int(used[i])),
        }  # fmt: skip
        for kind, js, scores in (
            ("proponents", top.proponents, top.proponent_scores),
            ("opponents", top.opponents, top.opponent_scores),
        ):
            rec[kind] = [_neighbour(opened, inf, i, int(j), float(s)) for j, s in zip(js, scores, strict=True)]  # fmt: skip
        records.append(rec)
    meta = _meta(opened)
    mark = highlight(opened.loaded.tokenizer)
    written = save(
        formats, args.out, "influence", records=records,
        html=lambda: query_html(records, meta, mark),
        table=lambda: _query_table(records), terminal=lambda: query_terminal(records),
    )  # fmt: skip
    for path in written:
        print(f"embgrad: wrote {path}")
    return 0


def _neighbour(opened: _Opened, inf: Any, i: int, j: int, score: float) -> dict[str, Any]:
    ex = opened.examples[j]
    parts = inf.by_token(i, j)
    tokens = sorted(parts.items(), key=lambda kv: -abs(kv[1]))
    return {
        "example": j, "row": ex["row"], "score": score, "text": ex["text"], "pair": ex["pair"],
        "label": ex["label"],
        "tokens": [{"id": int(t), "token": opened.token(t), "contribution": c} for t, c in tokens],
    }  # fmt: skip


def _query_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        for kind in ("proponents", "opponents"):
            for rank, r in enumerate(rec[kind], 1):
                rows.append(
                    {
                        "test": rec["test"], "test_text": rec["text"],
                        "test_label": str(rec["label"]), "kind": kind[:-1], "rank": rank,
                        "example": r["example"], "row": r["row"], "score": r["score"],
                        "text": r["text"], "label": None if r["label"] is None else str(r["label"]),
                        "tokens": json.dumps(r["tokens"], ensure_ascii=False),
                    }
                )  # fmt: skip
    return rows


def _meta(opened: _Opened) -> str:
    cfg = opened.config
    n_ck = len(cfg["checkpoints"]) or 1
    return (
        f"model {cfg['model']} ({cfg['framework']}); {len(opened.index)} training examples; "
        f"{n_ck} checkpoint(s); top_rows {cfg['top_rows'] or 'all'}; "
        f"special tokens {'skipped' if cfg['skip_special'] else 'included'}"
    )


# -- self ----------------------------------------------------------------------------------------
def _run_self(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .influence.report import check_outputs, save, self_html, self_terminal

    _positive("--top", args.top)
    formats = _formats_of(args)
    check_outputs(formats, args.out, "self_influence", args.overwrite)
    opened = _Opened(Path(args.index))
    scores = opened.index.self_influence()
    order = np.argsort(-scores, kind="stable")[: args.top]
    records = [
        {
            "rank": rank,
            "example": int(j),
            "row": opened.examples[j]["row"],
            "score": float(scores[j]),
            "text": opened.examples[j]["text"],
            "label": opened.examples[j]["label"],
        }
        for rank, j in enumerate(order.tolist(), 1)
    ]
    meta = _meta(opened)
    table = [dict(r, label=None if r["label"] is None else str(r["label"])) for r in records]
    written = save(
        formats, args.out, "self_influence", records=records,
        html=lambda: self_html(records, meta), table=lambda: table,
        terminal=lambda: self_terminal(records),
    )  # fmt: skip
    for path in written:
        print(f"embgrad: wrote {path}")
    return 0
