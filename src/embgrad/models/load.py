"""Model specs → a loaded model: the bundled MiniLM, ``hf:PATH``, ``module:pkg.mod:factory``,
and the Gluon port of BERT-style weights. Every check of the spec itself runs before any
weights are read."""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..backends import framework_names
from ..errors import InputError

#: the frameworks a spec can be loaded into (``--framework``): the backends' table
FRAMEWORKS = framework_names()


@dataclass
class Loaded:
    """A model ready to explain, and how to feed it texts.

    Attributes:
        model: the model (eval mode).
        tokenizer: an HF tokenizer, or None when ``tokenize`` is given.
        tokenize: a user's ``tokenize(texts) -> dict of native arrays``, or None.
        kind: ``"encoder"``, ``"classifier"``, ``"causal_lm"`` / ``"seq2seq_lm"`` (generation)
            or ``"auto"`` (user models).
        max_length: the model's token limit.
        name: how the model is named in outputs.
    """

    model: Any
    tokenizer: Any
    tokenize: Any
    kind: str
    max_length: int
    name: str


def check_spec(spec: str | None, framework: str) -> None:
    """InputError for a spec or framework that cannot load (no weights read)."""
    if framework not in FRAMEWORKS:
        raise InputError(
            f"framework={framework!r} is not one of {', '.join(map(repr, FRAMEWORKS))}"
        )
    if spec is None or spec.startswith("module:"):
        return
    if not (spec.startswith("hf:") or Path(spec).is_dir()):
        raise InputError(
            f"model {spec!r}: give hf:PATH (a HuggingFace model folder) or "
            "module:pkg.module:factory (a callable returning (model, tokenizer))"
        )
    path = Path(spec.removeprefix("hf:"))
    if not path.exists():
        raise InputError(f"model path does not exist: {str(path)!r}")


def load(spec: str | None = None, *, framework: str = "torch") -> Loaded:
    """``None``: the bundled all-MiniLM-L6-v2; ``"hf:PATH"``: an HF sequence classifier or
    plain encoder folder; ``"module:pkg.mod:factory"``: ``factory()`` returns
    ``(model, tokenizer or tokenize callable)``. ``framework="gluon"`` loads BERT encoder
    weights (the bundled model by default) into gluonnlp's BERTModel."""
    check_spec(spec, framework)
    if spec is not None and spec.startswith("module:"):
        return _from_factory(spec.removeprefix("module:"))
    from . import minilm

    if spec is None:
        path, name = minilm.model_path(), "all-MiniLM-L6-v2"
    else:
        path, name = Path(spec.removeprefix("hf:")), spec.removeprefix("hf:")
    if framework == "gluon":
        from .minilm_gluon import load_gluon_bert

        minilm.refuse_remote_code(Path(path))
        model, _ = load_gluon_bert(path)
        tokenizer = minilm.quiet_transformers().AutoTokenizer.from_pretrained(
            path, trust_remote_code=False
        )
        limit = minilm.max_length_of(Path(path), tokenizer, model_config(path))
        return Loaded(model, tokenizer, None, "encoder", limit, name)
    model, tokenizer, limit = minilm.load_hf(path)
    classifier = type(model).__name__.endswith("ForSequenceClassification")
    kind = "classifier" if classifier else "encoder"
    archs = [type(model).__name__]
    kind = minilm.lm_kind(archs) or kind
    return Loaded(model, tokenizer, None, kind, limit, name)


def _from_factory(target: str) -> Loaded:
    mod_name, _, attr = target.rpartition(":")
    if not mod_name or not attr:
        raise InputError(f"module spec {target!r} must look like pkg.module:factory")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"cannot import module {mod_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"module {mod_name!r} has no callable {attr!r}")
    made = factory()
    if not (isinstance(made, tuple) and len(made) == 2):
        raise InputError(
            f"{target}() must return (model, tokenizer or tokenize callable), got "
            f"{type(made).__name__}"
        )
    model, tok = made
    limit = int(getattr(tok, "model_max_length", 512) or 512)
    if hasattr(tok, "convert_ids_to_tokens"):
        return Loaded(model, tok, None, "auto", min(limit, 100_000), target)
    if not callable(tok):
        raise InputError(f"{target}() returned a tokenizer that is not callable")
    return Loaded(model, None, tok, "auto", limit, target)


#: the HF heads explained as several outputs per text (``embgrad.outputs``)
OUTPUT_HEADS = ("token_classifier", "question_answering")


def head_of(spec: str | None) -> str | None:
    """``"token_classifier"`` / ``"question_answering"`` for an ``hf:DIR`` saved from such a
    head (its config's ``architectures``), else None; reads only config.json, so it runs before
    any weights load (a folder it cannot read is left to the loader to name)."""
    if not spec or not spec.startswith("hf:"):
        return None
    from .minilm import lm_kind

    try:
        config = model_config(spec.removeprefix("hf:"))
    except (OSError, ValueError, TypeError):
        return None
    kind = lm_kind(list(getattr(config, "architectures", None) or []))
    return kind if kind in OUTPUT_HEADS else None


def model_config(path: str | Path) -> Any:
    """The HF config of a folder as an object with attributes (for limits)."""
    return SimpleNamespace(**json.loads((Path(path) / "config.json").read_text()))


def cannot_load(spec: str | None, exc: Exception) -> InputError:
    """One clear error for a model that failed to load (transformers, OSError, a user's
    factory): what ``embgrad explain`` and ``embgrad run`` both say."""
    shown = spec or "the bundled all-MiniLM-L6-v2"
    message = " ".join(str(exc).split()) or type(exc).__name__
    return InputError(f"--model {shown}: cannot load it: {message}")


# -- weights fingerprints (what a data run resumes only with) -----------------------------


def files_digest(folder: Path) -> str:
    """SHA-256 over every regular file below ``folder`` (relative path, size, content), in
    path order: any change to the weights, config or tokenizer files changes it."""
    outer = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        inner_hash = hashlib.sha256()
        with file.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):  # file_digest is 3.11+
                inner_hash.update(chunk)
        inner = inner_hash.hexdigest()
        outer.update(f"{file.relative_to(folder).as_posix()}\0{inner}\n".encode())
    return outer.hexdigest()


def spec_folder(spec: str | None) -> Path | None:
    """The folder a spec loads from (the bundled model's, ``hf:PATH``), else None."""
    if spec is None:
        from . import minilm

        return Path(minilm.model_path())
    if spec.startswith("module:"):
        return None
    folder = Path(spec.removeprefix("hf:"))
    return folder if (spec.startswith("hf:") or folder.is_dir()) and folder.is_dir() else None


def parameters_digest(model: Any) -> str | None:
    """SHA-256 over a loaded model's parameters and buffers (name, dtype, shape, bytes): a
    PyTorch module's ``state_dict()`` or a Gluon block's ``collect_params()``; None for a model
    that has neither."""
    digest = hashlib.sha256()
    if callable(getattr(model, "state_dict", None)):
        for name, value in model.state_dict().items():
            array = value.detach().cpu()
            try:
                data = array.contiguous().numpy()
            except TypeError:  # bfloat16 and other types numpy lacks: exact in float32
                data = array.float().contiguous().numpy()
            digest.update(f"{name}\0{data.dtype}\0{data.shape}\n".encode())
            digest.update(data.tobytes())
        return digest.hexdigest()
    if callable(getattr(model, "collect_params", None)):
        for name, param in sorted(model.collect_params().items()):
            data = param.data().asnumpy()
            digest.update(f"{name}\0{data.dtype}\0{data.shape}\n".encode())
            digest.update(data.tobytes())
        return digest.hexdigest()
    return None
