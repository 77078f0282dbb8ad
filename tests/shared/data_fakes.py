"""A deterministic stand-in for ``embgrad.explain.Explainer`` (data-engine tests only).

Tokens are the text's whitespace-separated words (cut to ``max_length``); scores, loss, norms
and HotFlip candidates are pure functions of the words, so any engine, batch size or order
gives the same rows. A text containing ``BOOM`` makes ``explain`` raise for its whole batch (the
engine must isolate the row); ``spec`` ``"fake:delay=S"`` sleeps S seconds per text.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embgrad.errors import InputError
from embgrad.items import StepAttribution

MAX_LENGTH = 8


@dataclass
class FakeAttribution:
    text: str
    tokens: list[str]
    scores: list[float]
    loss: float
    table_grad_norm: float
    delta: float | None
    hotflip: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    method: str = "gradient"
    target: str | None = None


def _score(word: str) -> float:
    return (zlib.crc32(word.encode("utf-8")) % 1000) / 1000.0


class FakeExplainer:
    max_length = MAX_LENGTH

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def _one(self, text: str, method: str, k: int, target: str | None) -> FakeAttribution:
        words = text.split()
        tokens = words[: self.max_length]
        scores = [_score(w) for w in tokens]
        order = sorted(range(len(tokens)), key=lambda i: -scores[i])[:k]
        flips = [
            {
                "position": i,
                "token": tokens[i],
                "replacement": tokens[i][::-1],
                "estimate": scores[i] / 2,
                "verified": scores[i] / 3,
                "direction": "abs",
            }
            for i in order
        ]
        return FakeAttribution(
            text=text,
            tokens=tokens,
            scores=scores,
            loss=sum(scores),
            table_grad_norm=math.sqrt(sum(s * s for s in scores)),
            delta=0.5 if method == "integrated_gradients" else None,
            hotflip=flips,
            truncated=len(words) > self.max_length,
            method=method,
            target=target,
        )

    def explain(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        targets: list[str | int] | None = None,
        *,
        method: str = "gradient",
        hotflip_k: int = 3,
        **options: Any,
    ) -> list[FakeAttribution]:
        self.calls += 1
        if any("BOOM" in t for t in texts):
            raise InputError("the fake explainer refuses BOOM")
        if self.delay:
            time.sleep(self.delay * len(texts))
        out = []
        for i, text in enumerate(texts):
            target = None if targets is None else str(targets[i])
            out.append(self._one(text, method, hotflip_k, target))
            if pairs is not None:
                out.append(self._one(pairs[i], method, hotflip_k, target))
        return out


def make_fake(spec: str | None, framework: str = "torch") -> FakeExplainer:
    """Factory with ``Explainer.from_spec``'s shape; ``"missing..."`` specs fail to load."""
    if spec is not None and spec.startswith("missing"):
        raise InputError(f"model path does not exist: {spec!r}")
    delay = 0.0
    if spec is not None and spec.startswith("fake:delay="):
        delay = float(spec.removeprefix("fake:delay="))
    return FakeExplainer(delay)


class RecordingExplainer(FakeExplainer):
    """Remembers the texts and pairs of every explain call (``batches``)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[list[str], list[str] | None]] = []

    def explain(self, texts: list[str], pairs: list[str] | None = None, **kw: Any) -> Any:
        self.batches.append((list(texts), None if pairs is None else list(pairs)))
        return super().explain(texts, pairs, **kw)


class FakeGenerator(FakeExplainer):
    """A stand-in for an LM's ``Explainer.explain_generation``: deterministic matrices of the
    continuation's words × the text's words; an empty continuation fails (as for a real LM)."""

    def explain_generation(
        self, texts: list[str], continuations: list[str], **options: Any
    ) -> list[StepAttribution]:
        self.calls += 1
        out = []
        for text, cont in zip(texts, continuations, strict=True):
            if "BOOM" in text or not cont.strip():
                raise InputError(f"cannot explain {text!r} → {cont!r}")
            words, steps = text.split(), cont.split()
            out.append(
                StepAttribution(
                    text=text,
                    tokens=words,
                    generated=steps,
                    scores=[[_score(w) * _score(y) for w in words] for y in steps],
                    step_scores={
                        "probability": [_score(y) for y in steps],
                        "entropy": [1.0 - _score(y) for y in steps],
                    },
                    quantity=[-_score(y) for y in steps],
                    method=options.get("method", "gradient"),
                    kind="decoder",
                )
            )
        return out


def make_generator(spec: str | None, framework: str = "torch") -> FakeGenerator:
    return FakeGenerator()


class KillOnce(FakeExplainer):
    """A stand-in that SIGKILLs its own process the first time it explains ``sentence 30``
    outside the process that made the factory (so in a Ray actor, never in the driver)."""

    def __init__(self, marker: str, driver: int) -> None:
        super().__init__()
        self.marker, self.driver = marker, driver

    def explain(self, texts: list[str], *args: Any, **kwargs: Any) -> list[FakeAttribution]:
        hit = any(t.startswith("sentence 30 ") for t in texts)
        if hit and os.getpid() != self.driver and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().explain(texts, *args, **kwargs)


def kill_once_factory(marker: str) -> Any:
    """A factory of :class:`KillOnce` explainers (picklable: the driver's pid is captured)."""
    driver = os.getpid()
    return lambda spec, framework="torch": KillOnce(marker, driver)


#: row index → the kind of error the corpus plants there
BAD_ROWS = {
    5: "empty_text",
    9: "undecodable",
    13: "missing_value",
    17: "explain_failed",
    21: "invalid_json",
}


def corpus_lines(n: int) -> list[bytes]:
    """jsonl lines: texts of 2–12 words (some past MAX_LENGTH), a pair, a label and an id per
    row, with the bad rows of ``BAD_ROWS`` planted."""
    lines = []
    for i in range(n):
        text = f"sentence {i} " + " ".join(f"w{(i * j) % 13}" for j in range(i % 11))
        record = {
            "text": text.strip(),
            "pair": f"pair of {i} here",
            "label": f"c{i % 3}",
            "key": f"k{i:04d}",
        }
        kind = BAD_ROWS.get(i)
        if kind == "empty_text":
            record["text"] = "   "
        elif kind == "missing_value":
            del record["text"]
        elif kind == "explain_failed":
            record["text"] = "this will BOOM"
        line = json.dumps(record).encode("utf-8")
        if kind == "undecodable":
            line = line.replace(b"sentence", b"sent\xffence")
        elif kind == "invalid_json":
            line = line[:-3]
        lines.append(line)
    return lines


def write_corpus(path: Path, n: int = 40, *, blank_every: int = 0) -> Path:
    """Write ``corpus_lines(n)`` to ``path`` (a blank line after every ``blank_every``)."""
    out = []
    for i, line in enumerate(corpus_lines(n)):
        out.append(line)
        if blank_every and i % blank_every == 0:
            out.append(b"")
    path.write_bytes(b"\n".join(out) + b"\n")
    return path
