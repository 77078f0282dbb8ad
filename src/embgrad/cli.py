"""The ``embgrad`` command line: ``embgrad explain`` and ``embgrad methods``.

The command tree is built by :func:`build_parser`; method names, summaries and options come from
the method registry; ``embgrad run`` comes from ``embgrad.data.cli`` (its ``add_parser``). Exit codes: 0 ok, 1 an embgrad error (one line
on stderr, no traceback), 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from ._cliargs import add_label_args, add_method_args, check_method_args, formats, labels_of
from ._version import __version__
from .cli_generation import add_flags as generation_flags
from .cli_generation import run as run_generation
from .cli_generation import wanted as wants_generation
from .cli_outputs import run as run_outputs
from .cli_outputs import wanted as wants_outputs
from .errors import EmbgradError, InputError
from .methods import get_method, list_methods
from .models.load import FRAMEWORKS, cannot_load
from .render import write

FORMATS = write.FORMATS
DEFAULT_FORMATS = ("terminal", "html", "png")
#: explain's output folder when --out is not given: embgrad's own, refreshed by every run
DEFAULT_OUT = "embgrad-out"
#: the file that marks a folder as embgrad's default output folder (so it may be refreshed)
OWN_MARK = ".embgrad-default-out"


def _methods_help() -> str:
    return "; ".join(f"{n}: {get_method(n).summary}" for n in list_methods())


def build_parser() -> argparse.ArgumentParser:
    """The ``embgrad`` parser with its subcommands (``run`` from ``embgrad.data.cli``)."""
    parser = argparse.ArgumentParser(
        prog="embgrad",
        description="Exact per-sample gradients w.r.t. word embeddings, and token attributions.",
    )
    parser.add_argument("--version", action="version", version=f"embgrad {__version__}")
    parser.epilog = (
        "--model module:pkg.mod:factory imports that module and runs its factory, by design: "
        "name only code you trust. Code in an hf: model folder is never run."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_explain(sub)
    methods = sub.add_parser("methods", help="list the attribution methods and their options")
    methods.set_defaults(func=_run_methods)
    # `embgrad run`: looked up in sys.modules at build time (a test substitutes it)
    importlib.import_module("embgrad.data.cli").add_parser(sub)
    importlib.import_module("embgrad.cli_influence").add_parser(sub)
    return parser


def _add_explain(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="show which tokens drive a model's output (heatmaps, HotFlip swaps)",
        description=(
            "Explain which tokens drive a model's output. With no --text: a few bundled "
            "sentence pairs with all-MiniLM-L6-v2, explaining each pair's cosine similarity. "
            "Texts longer than the model's token limit are truncated (and flagged so)."
        ),
        epilog="methods: " + _methods_help(),
    )
    p.add_argument(
        "--model",
        metavar="SPEC",
        help="hf:PATH (HF sequence classifier or encoder folder; code in the folder is never "
        "run) or module:pkg.mod:factory (returns (model, tokenizer); imports and runs that "
        "code, by design); default: the bundled all-MiniLM-L6-v2",
    )
    p.add_argument("--framework", choices=FRAMEWORKS, default="torch",
                   help="gluon: the same BERT weights in gluonnlp's BERTModel (default torch)")  # fmt: skip
    p.add_argument("--text", action="append", metavar="TEXT", help="a text (repeatable)")
    p.add_argument(
        "--pair", action="append", metavar="TEXT",
        help="the partner of the text at the same position (repeatable): explains the pair's "
        "cosine similarity, one result per sentence",
    )  # fmt: skip
    p.add_argument(
        "--target", action="append", metavar="LABEL",
        help="class label or index to explain (classifiers; one for all texts or one per text); "
        "default: the predicted class",
    )  # fmt: skip
    add_label_args(p)
    add_method_args(p)
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward (default 16)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the html/json/png outputs (default ./embgrad-out, embgrad's "
                   "own: each run replaces the files there; a folder you name is never "
                   "overwritten without --overwrite)")  # fmt: skip
    p.add_argument(
        "--format", action="append", type=formats(FORMATS), metavar="FORMATS",
        help=f"outputs: {', '.join(FORMATS)}; repeatable or a comma list "
        f"(default {','.join(DEFAULT_FORMATS)})",
    )  # fmt: skip
    generation_flags(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist in --out (default: refuse)")  # fmt: skip
    p.set_defaults(func=_run_explain)


def _bundled_pairs() -> tuple[list[str], list[str]]:
    data = json.loads(
        (Path(__file__).parent / "models" / "data" / "pairs.json").read_text(encoding="utf-8")
    )
    return [a for a, _ in data["pairs"]], [b for _, b in data["pairs"]]


def _run_explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .explain import Explainer
    from .models.load import check_spec
    from .tasks import check_request, task_for

    formats = [f for group in (args.format or [list(DEFAULT_FORMATS)]) for f in group]
    own = _default_out(args)
    _check_utf8(args)
    if wants_generation(args):
        code = run_generation(args, parser, formats)
    elif wants_outputs(args):
        code = run_outputs(args, parser, formats)
    else:
        code = None
    if code is not None:
        if own and code == 0:
            _mark_own(Path(args.out))
        return code
    texts, pairs = args.text, args.pair
    if pairs and not texts:
        parser.error("--pair needs --text (one --text per --pair)")
    labels = labels_of(args)
    if texts is None and args.model is None and labels is None:
        texts, pairs = _bundled_pairs()
    elif texts is None:
        parser.error("--text is required with --model or --labels")
    # every check that can fail for every text, before the model loads
    options = dict(args.option)
    check_method_args(args.method, options, args.hotflip_k)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {args.batch_size}")
    check_spec(args.model, args.framework)
    if args.model is None:  # the bundled encoder: the task is known before loading it
        task_for("encoder", texts, pairs, args.target, candidate_labels=labels)
    else:
        check_request(texts, pairs, args.target, labels)
    write.check_folder(formats, args.out, args.overwrite)

    try:
        explainer = Explainer.from_spec(args.model, framework=args.framework)
    except EmbgradError:
        raise
    except Exception as exc:  # transformers / OSError / a factory: as `embgrad run` says it
        raise cannot_load(args.model, exc) from exc
    explainer.batch_size = max(2, args.batch_size)
    task = explainer.task(texts, pairs, args.target, labels)
    if task.note:
        print(f"embgrad: {task.note}", file=sys.stderr)
    items = explainer.explain(texts, pairs, args.target, candidate_labels=labels,
                              method=args.method, hotflip_k=args.hotflip_k, **options)  # fmt: skip
    titles = (
        [f"pair {i // 2 + 1}{'AB'[i % 2]}" for i in range(len(items))]
        if pairs
        else [f"[{i + 1}]" for i in range(len(items))]
    )
    # the options as run: the user's, and the defaults every output records (IG's baseline)
    run_options = {
        k: v if isinstance(v, (int, float, str, bool)) else repr(v)
        for k, v in get_method(args.method).as_run(options).items()
    }
    meta: dict[str, Any] = {
        "model": explainer.name,
        "framework": explainer.framework,
        "method": args.method,
        "options": run_options,
        "quantity": task.quantity or "log p(target)",
    }  # fmt: skip
    labels_used = getattr(task, "candidate_labels", None)
    if labels_used is not None:
        meta["labels"] = list(labels_used)
    if task.note:
        meta["note"] = task.note
    subtitle = f"model {explainer.name} ({explainer.framework})"
    if run_options:
        subtitle += "; " + ", ".join(f"{k}={v}" for k, v in run_options.items())
    view = write.View(
        items,
        titles=titles,
        quantity=task.quantity,
        subtitle=subtitle + (f"; {task.note}" if task.note else ""),
        meta=meta,
    )
    if "terminal" in formats:
        write.show(view)
    try:
        paths = write.save_all(view, formats, Path(args.out), overwrite=args.overwrite)
    except OSError as exc:
        raise InputError(
            f"writing to --out {args.out!r} failed: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
            + "; free some space or choose another --out folder, then run the command again"
        ) from exc
    if own and paths:
        _mark_own(Path(args.out))
    for path in paths:
        print(f"embgrad: wrote {path}")
    return 0


def _default_out(args: argparse.Namespace) -> bool:
    """Without --out: ``./embgrad-out``, embgrad's own folder, whose files each run replaces
    (so the README's commands run one after another); True when that applies. A folder of that
    name that embgrad did not make is treated as one the user named."""
    if args.out is not None:
        return False
    args.out = DEFAULT_OUT
    folder = Path(DEFAULT_OUT)
    if folder.exists() and not (folder / OWN_MARK).is_file():
        return False
    args.overwrite = True
    return True


def _mark_own(folder: Path) -> None:
    if folder.is_dir():
        with contextlib.suppress(OSError):  # the outputs are written; the mark is a courtesy
            (folder / OWN_MARK).write_text(
                "embgrad explain's default output folder: each run replaces its files\n",
                encoding="utf-8",
            )


def _check_utf8(args: argparse.Namespace) -> None:
    """InputError for a --text/--pair/--target holding bytes that are not UTF-8 (the shell
    passes them through as lone surrogates), as ``embgrad run`` refuses such rows."""
    for flag in ("text", "pair", "target", "continuation"):
        for i, value in enumerate(getattr(args, flag, None) or []):
            if not isinstance(value, str):
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(
                    f"--{flag} number {i + 1} holds bytes that are not valid UTF-8; give it as "
                    "UTF-8 text"
                ) from None


#: "(default 3)", "(default: all)", ", default" in an option's help: the listing says it once
_DEFAULT_IN_HELP = re.compile(r"\s*\(default[^)]*\)|,\s*default(?=\))")


def _run_methods(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    for name in list_methods():
        cls = get_method(name)
        print(f"{name}: {cls.summary}")
        for opt, default in cls.cli_options().items():
            text = cls.option_help.get(opt, "")
            if default is None and _DEFAULT_IN_HELP.search(text):
                # the help's "(default: ...)" says what None means: the default, said once
                print(f"    -O {opt}=...: {text}")
                continue
            text = _DEFAULT_IN_HELP.sub("", text)
            print(f"    -O {opt}=... (default {default!r}): {text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 embgrad error, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args, parser))
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    except EmbgradError as e:
        message = " ".join(str(e).split())
        print(f"embgrad: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("embgrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
