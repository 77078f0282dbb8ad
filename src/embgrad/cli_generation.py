"""``embgrad explain --continuation TEXT`` / ``--generate N``: which input tokens drove each
generated token, for an HF causal or seq2seq LM (``--model hf:PATH``). Kept apart from
``cli.py``: :func:`add_flags` adds the flags to ``explain``, :func:`wanted` tells whether they
were given and :func:`run` writes the views (terminal, HTML, PNG, JSON) of the matrices."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import InputError

LM_KINDS = ("causal_lm", "seq2seq_lm")


def add_flags(p: argparse.ArgumentParser) -> None:
    """``--continuation`` (repeatable) and ``--generate N`` on the ``explain`` parser."""
    g = p.add_argument_group("generation (HF causal / seq2seq LMs, --model hf:PATH)")
    g.add_argument(
        "--continuation", action="append", metavar="TEXT",
        help="forced continuation of the --text at the same position (one for all or one per "
        "text): explains log p(token | text, earlier tokens) for each of its tokens",
    )  # fmt: skip
    g.add_argument("--generate", type=int, metavar="N",
                   help="explain the model's N greedy tokens after each --text")  # fmt: skip


def wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "continuation", None)) or getattr(args, "generate", None) is not None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, formats: list[str]) -> int:
    """Explain the continuations (or greedy generations) of ``args.text`` and write the views."""
    from .models.load import check_spec, load
    from .outputs.api import attribute_generation
    from .outputs.generation import encode_texts
    from .render import matrix, write

    if args.continuation and args.generate is not None:
        parser.error("give --continuation or --generate, not both")
    if not args.text or args.model is None:
        parser.error("--continuation/--generate need --model hf:PATH and --text")
    if args.pair or args.target:
        parser.error("--pair and --target do not apply to --continuation/--generate")
    if args.framework != "torch":
        raise InputError("generation from the command line needs --framework torch (HF LMs)")
    check_spec(args.model, args.framework)
    write.check_folder(formats, args.out, args.overwrite)  # before the model loads
    conts = args.continuation
    if conts is not None and len(conts) == 1 and len(args.text) > 1:
        conts = conts * len(args.text)
    loaded = load(args.model, framework=args.framework)
    if loaded.kind not in LM_KINDS:
        raise InputError(
            f"model {args.model} is a {loaded.kind}, not a causal or seq2seq LM (its config's "
            "architectures must name ...ForCausalLM, ...LMHeadModel or ...ForConditionalGeneration)"
        )
    inputs, targets, tmask = encode_texts(loaded.model, loaded.tokenizer, args.text, conts)
    res = attribute_generation(
        loaded.model, inputs, targets, target_mask=tmask, generate=args.generate,
        method=args.method, tokenizer=loaded.tokenizer, **dict(args.option),
    )  # fmt: skip
    res.prompts = list(args.text)  # the headings and JSON "text": the prompts as given
    items = res.items
    from .methods import get_method

    # the options as run, with the defaults every output records (IG's baseline)
    run_options = {
        k: v if isinstance(v, (int, float, str, bool)) else repr(v)
        for k, v in get_method(args.method).as_run(dict(args.option)).items()
    }
    meta: dict[str, Any] = {
        "model": loaded.name, "method": args.method, "kind": res.kind, "options": run_options,
    }  # fmt: skip
    if "terminal" in formats:
        matrix.show(items)
    for path in matrix.save_all(items, formats, Path(args.out), **meta):
        print(f"embgrad: wrote {path}")
    return 0
