"""What a run is asked to do (:class:`RunConfig`), what it did (:class:`RunSummary`), and
the small protocol the engines need from an explainer."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import InputError
from ..items import TokenAttribution

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = ("local", "ray")


class ExplainerLike(Protocol):
    """What the engines call: ``embgrad.explain.Explainer`` satisfies it."""

    max_length: int

    def explain(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        targets: list[str | int] | None = None,
        *,
        method: str = "gradient",
        hotflip_k: int = 3,
        **options: Any,
    ) -> Sequence[TokenAttribution]: ...


#: ``factory(model_spec, framework)`` → an explainer; the default is ``Explainer.from_spec``.
ExplainerFactory = Callable[[str | None, str], ExplainerLike]


def default_factory(spec: str | None, framework: str) -> ExplainerLike:
    """Load ``embgrad.explain.Explainer.from_spec(spec, framework=framework)``."""
    from ..explain import Explainer

    return Explainer.from_spec(spec, framework=framework)


@dataclass(frozen=True)
class RunConfig:
    """One ``embgrad run``: read ``data``, explain every row, write Parquet shards to ``out``.

    Attributes:
        data: a ``.jsonl`` (``.ndjson``, ``.json`` with one object a line), ``.csv`` or
            ``.parquet`` file.
        text_column / pair_column / label_column / id_column: column names. With a pair
            column each row explains the pair's similarity (both sides are written); a label
            column gives each row's ``target``; an id column gives the ``id`` written (as a
            string), else ``id`` is the row's 0-based index in the file (blank lines skipped).
        out: the output folder (created; a folder holding a different run is refused).
        model / framework: passed to ``Explainer.from_spec`` (None: the bundled MiniLM).
        method / hotflip_k / options: passed to ``Explainer.explain``.
        batch_size: rows per ``explain`` call.
        rows_per_shard: input rows per output shard: the unit of resumption.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data, an actor pool).
        ray_address: a Ray cluster to join (``engine="ray"`` only); None starts a local one.
        workers: Ray actors, each holding one model (``engine="ray"`` only).
        continuation_column: a forced continuation of each text (an HF causal / seq2seq LM):
            each row gets the matrix of its continuation's tokens × input tokens.
        candidate_labels: zero-shot labels for single texts on an encoder (``--labels``; see
            ``embgrad.tasks.zeroshot``); the label column then names one of them.
    """

    data: Path | str
    text_column: str
    out: Path | str
    pair_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    model: str | None = None
    framework: str = "torch"
    method: str = "gradient"
    hotflip_k: int = 3
    options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    rows_per_shard: int = 1000
    engine: Engine = "local"
    ray_address: str | None = None
    workers: int | None = None
    continuation_column: str | None = None
    candidate_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "options", _as_run(self.method, dict(self.options)))
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        for name in ("batch_size", "rows_per_shard"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer; got {value!r}")
        if not isinstance(self.hotflip_k, int) or self.hotflip_k < 0:
            raise InputError(f"hotflip_k must be an integer >= 0; got {self.hotflip_k!r}")
        if self.engine != "ray" and (self.workers is not None or self.ray_address is not None):
            raise InputError(
                "--workers and --ray-address (workers=, ray_address=) apply to --engine ray only"
            )
        if self.continuation_column is not None and (self.pair_column or self.label_column):
            raise InputError(
                "--continuation-column explains an LM's continuation of each text: it does not "
                "combine with --pair-column or --label-column"
            )
        head = self.head
        if head is not None and (self.continuation_column or self.label_column
                                 or self.candidate_labels is not None):  # fmt: skip
            raise InputError(
                f"the model is a {head}: each text's tokens (or span) are explained with the "
                "predicted labels; --continuation-column, --label-column and --labels do not apply"
            )
        if head == "question_answering" and self.pair_column is None:
            raise InputError("a question-answering model needs --pair-column (the contexts)")
        if head == "token_classifier" and self.pair_column is not None:
            raise InputError("a token classifier reads single texts: drop --pair-column")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise InputError(f"workers must be a positive integer; got {self.workers!r}")
        if self.candidate_labels is not None:
            from ..tasks.zeroshot import check_labels

            labels = tuple(check_labels(list(self.candidate_labels), "candidate_labels"))
            object.__setattr__(self, "candidate_labels", labels)
            if self.pair_column is not None:
                raise InputError(
                    "--labels classify single texts; with --pair-column the pair's similarity "
                    "is explained: give one or the other"
                )
        try:
            json.dumps(self.options)
        except (TypeError, ValueError) as exc:
            raise InputError(f"options must be JSON-serialisable: {exc}") from exc

    @property
    def head(self) -> str | None:
        """``"token_classifier"`` / ``"question_answering"`` when the model is such an HF head
        (rows then hold a matrix per text: ``writer.outputs_fields``), else None."""
        from ..models.load import head_of

        return head_of(self.model)

    def explain_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Explainer.explain`` (besides texts, pairs, targets)."""
        if self.continuation_column is not None or self.head is not None:
            return {"method": self.method, **self.options}
        out = {"method": self.method, "hotflip_k": self.hotflip_k, **self.options}
        if self.candidate_labels is not None:
            out["candidate_labels"] = list(self.candidate_labels)
        return out

    def quantity(self) -> str:
        """What the output column ``value`` holds, in words (written in the metadata)."""
        from ..tasks.zeroshot import QUANTITY

        if self.continuation_column is not None:
            return "log p(y_k | x, y_<k) per generated step"
        if self.head == "token_classifier":
            return "log p(label_t | x) per explained token"
        if self.head == "question_answering":
            return "log p(start = s) + log p(end = e) of the span, then each term"
        if self.pair_column is not None:
            return "cosine similarity"
        if self.candidate_labels is not None or self.model is None:
            return QUANTITY
        return "log p(target | text) (a classifier) or log p(label | text), zero-shot (an encoder)"

    def described(self) -> dict[str, Any]:
        """JSON-ready description (for the manifest and the Parquet metadata)."""
        d = asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        if self.candidate_labels is not None:
            d["candidate_labels"] = list(self.candidate_labels)
        return d


@dataclass
class RunSummary:
    """What one invocation did. ``explained + errors + skipped == total_rows`` when complete.

    ``errors`` and ``truncated`` count this invocation's rows; ``errors_total`` counts the
    lines of ``errors.jsonl`` (earlier invocations included).
    """

    out: Path
    total_rows: int
    explained: int = 0
    errors: int = 0
    skipped: int = 0
    truncated: int = 0
    seconds: float = 0.0
    work_seconds: float = 0.0
    errors_total: int = 0

    @property
    def rows_per_s(self) -> float:
        """Rows handled per second of work (after the checks and the model load)."""
        done = self.explained + self.errors
        return done / self.work_seconds if self.work_seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.explained + self.errors + self.skipped >= self.total_rows

    def format(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"embgrad run: {self.total_rows} rows in {self.out}",
            f"  explained now      {self.explained}"
            + (f" ({self.truncated} truncated to the model's limit)" if self.truncated else ""),
            f"  already done       {self.skipped} (skipped)",
            f"  errors now         {self.errors}"
            + (
                f" ({self.errors_total} in total, see {self.out / 'errors.jsonl'})"
                if self.errors_total
                else ""
            ),
            f"  time               {self.seconds:.1f} s "
            f"({self.seconds - self.work_seconds:.1f} s checks and model load), "
            f"{self.rows_per_s:.1f} rows/s",
        ]
        return "\n".join(lines)


def _as_run(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options plus the defaults every output records (integrated gradients' baseline):
    the manifest, the fingerprint and the Parquet metadata say what the rows were made with.
    An unknown method is left to the run's own check (which names it)."""
    from ..methods import get_method, list_methods

    return get_method(method).as_run(options) if method in list_methods() else options
