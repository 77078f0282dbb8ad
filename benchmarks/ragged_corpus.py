"""A ragged benchmark file of real text: sentences from the installed packages' metadata
(``importlib.metadata`` descriptions / READMEs), 8–120 MiniLM tokens, as jsonl rows with a
``text`` and a ``pair`` column (the next sentence of the same document; a sentence can be the pair of one row and the text of the next) — issue 12.

    python benchmarks/ragged_corpus.py OUT.jsonl [--rows 2000]

Deterministic for one set of installed packages (distributions sorted by name, sentences in
document order, then a seeded shuffle of the rows so lengths are not grouped by package).
Lengths are counted with the bundled MiniLM tokenizer when it is installed, else as words ×1.3.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import random
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_NOISE = re.compile(r"[`*#|<>\[\]{}=_~^\\]|https?://\S+")


def _documents() -> Iterator[str]:
    seen = set()
    for dist in sorted(md.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        name = (dist.metadata["Name"] or "").lower()
        if name in seen:
            continue
        seen.add(name)
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""  # type: ignore[attr-defined]
        summary = dist.metadata.get("Summary") or ""
        yield f"{summary}. {body}" if summary else str(body)


def _sentences(doc: str) -> Iterator[str]:
    for para in re.split(r"\n\s*\n", doc):
        line = " ".join(_NOISE.sub(" ", para).split())
        for s in _SENTENCE.split(line):
            if s and s[0].isupper() and sum(c.isalpha() for c in s) > 0.7 * len(s) - 10:
                yield s


def _counter() -> Callable[[str], int]:
    try:
        from transformers import AutoTokenizer

        from embgrad.models.minilm import model_path

        tok = AutoTokenizer.from_pretrained(str(model_path()))
        return lambda s: len(tok(s, add_special_tokens=True)["input_ids"])
    except Exception:  # no transformers / bundled model: an estimate
        return lambda s: int(1.3 * len(s.split())) + 2


def rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows {"id", "text", "pair"}: consecutive sentence pairs, both 8–120 tokens."""
    count = _counter()
    out: list[dict[str, str]] = []
    for doc in _documents():
        prev = None
        for s in _sentences(doc):
            if not 8 <= count(s) <= 120:
                prev = None
                continue
            if prev is not None:
                out.append({"id": f"r{len(out):05d}", "text": prev, "pair": s})
            prev = s
        if len(out) >= 4 * n:
            break
    random.Random(seed).shuffle(out)
    if len(out) < n:
        raise SystemExit(f"only {len(out)} sentence pairs in the installed packages' metadata")
    return out[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--rows", type=int, default=2000)
    a = p.parse_args(argv)
    with a.out.open("w", encoding="utf-8") as f:
        for r in rows(a.rows):
            f.write(json.dumps(r) + "\n")
    print(f"wrote {a.rows} rows to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
