"""``embgrad explain --model hf:DIR`` on a token-classification or question-answering head:
the head is detected from the folder's config (``architectures``), before any weights load.
Token classification explains every real token of each ``--text`` (one matrix per text: the
explained positions × its tokens, each row with its predicted label and probability); question
answering explains the predicted span of each ``--text QUESTION --pair CONTEXT``. Kept apart
from ``cli.py`` like ``cli_generation``: :func:`wanted` and :func:`run`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import InputError


def wanted(args: argparse.Namespace) -> bool:
    from .models.load import head_of

    return head_of(getattr(args, "model", None)) is not None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, formats: list[str]) -> int:
    """Explain ``args.text`` (and ``args.pair``) on the head and write the matrix views."""
    from .models.load import check_spec, head_of, load
    from .outputs.qa_api import attribute_qa
    from .outputs.tokens_api import attribute_tokens
    from .render import matrix, write

    head = head_of(args.model)
    if not args.text:
        parser.error(f"--text is required with a {head} model")
    if head == "question_answering":
        if not args.pair or len(args.pair) != len(args.text):
            parser.error("question answering needs one --pair CONTEXT per --text QUESTION")
    elif args.pair:
        parser.error("--pair applies to question answering; a token classifier reads --text")
    if args.framework != "torch":
        raise InputError(f"a {head} from an HF folder needs --framework torch")
    check_spec(args.model, args.framework)
    options = dict(args.option)
    write.check_folder(formats, args.out, args.overwrite)  # before the model loads
    loaded = load(args.model, framework=args.framework)
    texts, tok = list(args.text), loaded.tokenizer
    res: Any
    if head == "question_answering":
        res = attribute_qa(loaded.model, texts, args.pair, method=args.method, tokenizer=tok,
                           **options)  # fmt: skip
    else:
        target = None
        if args.target:
            target = args.target[0] if len(args.target) == 1 else args.target
        res = attribute_tokens(loaded.model, texts, target, method=args.method, tokenizer=tok,
                               **options)  # fmt: skip
    items = res.items
    meta: dict[str, Any] = {"model": loaded.name, "method": args.method, "kind": res.kind}
    if "terminal" in formats:
        matrix.show(items)
    for path in matrix.save_all(items, formats, Path(args.out), **meta):
        print(f"embgrad: wrote {path}")
    return 0
