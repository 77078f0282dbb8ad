"""Arguments shared by ``embgrad explain`` and ``embgrad run``: one spelling for both (the method,
``-O/--option``, ``--hotflip-k``, ``--labels`` / ``--labels-file``), and their checks, which
run before any model is loaded."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from .errors import InputError


def option(value: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, value); VALUE is a Python literal when it parses as one, else text."""
    key, eq, raw = value.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"method options look like KEY=VALUE, got {value!r}")
    try:
        parsed: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        parsed = raw
    return key.strip(), parsed


def formats(choices: tuple[str, ...] | list[str]) -> Any:
    """An argparse ``type`` for ``--format A,B``: the comma-separated names, each one of
    ``choices`` (a usage error naming the unknown ones and the choices otherwise)."""

    def parse(value: str) -> list[str]:
        chosen = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in chosen if v not in choices]
        if bad or not chosen:
            raise argparse.ArgumentTypeError(
                f"unknown format(s) {', '.join(bad) or repr(value)}; choose from "
                f"{', '.join(choices)}"
            )
        return chosen

    return parse


def method_name(value: str) -> str:
    """A registered method's name; a usage error suggesting the close names otherwise."""
    from .methods import get_method

    try:
        return get_method(value).name
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_method_args(group: Any) -> None:
    """``--method``, ``-O/--option`` and ``--hotflip-k`` on a parser or argument group."""
    from .methods import list_methods

    names = list_methods()
    group.add_argument("--method", type=method_name, default="gradient", metavar="M",
                       help=f"attribution method: {', '.join(names)} (default gradient); see "
                       "`embgrad methods`")  # fmt: skip
    group.add_argument("-O", "--option", action="append", type=option, default=[],
                       metavar="KEY=VALUE",
                       help="a method option, e.g. -O n_steps=32 (repeatable); VALUE is a Python "
                       "literal when it parses as one, else text")  # fmt: skip
    group.add_argument("--hotflip-k", type=int, default=3, metavar="K",
                       help="HotFlip substitutions kept per text (0: none; default 3)")  # fmt: skip


def add_label_args(group: Any) -> None:
    """``--labels`` and ``--labels-file``: zero-shot labels for single texts on an encoder."""
    group.add_argument(
        "--labels", metavar="A,B,...",
        help="classify single texts zero-shot among these label descriptions (comma-separated) "
        "by embedding similarity, explaining log p(label | text); default for an encoder: "
        "positive,negative",
    )  # fmt: skip
    group.add_argument("--labels-file", metavar="FILE",
                       help="the labels, one per line (blank lines and #-comments skipped)")  # fmt: skip


def labels_of(args: argparse.Namespace) -> list[str] | None:
    """The labels of ``--labels`` / ``--labels-file`` (checked), or None."""
    if args.labels is not None and args.labels_file is not None:
        raise InputError("give --labels or --labels-file, not both")
    if args.labels is not None:
        raw = [x.strip() for x in args.labels.split(",")]
    elif args.labels_file is not None:
        path = Path(args.labels_file)
        if not path.is_file():
            raise InputError(f"--labels-file {str(path)!r} is not a file")
        lines = path.read_text(encoding="utf-8").splitlines()
        raw = [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
    else:
        return None
    from .tasks.zeroshot import check_labels

    what = "--labels" if args.labels is not None else "--labels-file"
    return check_labels([x for x in raw if x] if args.labels_file is not None else raw, what)


def check_method_args(method: str, options: dict[str, Any], hotflip_k: int) -> None:
    """The method's options (names and types) and ``--hotflip-k``; InputError when wrong."""
    from .methods import get_method

    cls = get_method(method)
    arrays = sorted(set(options) & set(cls.array_options) & set(cls.options()))
    if arrays:
        raise InputError(
            f"option(s) {', '.join(arrays)} of {method!r} take arrays made from the batch and "
            "are set by embgrad; they cannot be given on the command line"
        )
    cls.validate(options)
    if hotflip_k < 0:
        raise InputError(f"--hotflip-k must be an integer >= 0, got {hotflip_k}")
