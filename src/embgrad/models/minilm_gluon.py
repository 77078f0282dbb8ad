"""all-MiniLM-L6-v2 (or any HF BERT encoder folder) in MXNet: gluonnlp's ``BERTModel`` with the
same safetensors weights.

Every HF parameter maps one-to-one onto a gluonnlp parameter (no transposes: torch Linear
weights (out, in) have Dense's layout); ``embeddings.position_ids`` is a buffer and is skipped.
Hyper-parameters come from ``config.json``; dropout is 0 (inference), the activation is the erf
GELU (``'gelu'``, as HF) and the encoder's layer-norm epsilon is the config's (1e-12).
Inputs: ``(ids (B, T), token_types (B, T), valid_length (B,))``, float32, right-padded;
outputs: ``(sequence (B, T, D), pooled (B, D))`` — padded positions are zeroed.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from ..errors import InputError, missing_extra

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_TOP = {
    "embeddings.word_embeddings.weight": "word_embed.0.weight",
    "embeddings.token_type_embeddings.weight": "token_type_embed.0.weight",
    "embeddings.position_embeddings.weight": "encoder.position_weight",
    "embeddings.LayerNorm.weight": "encoder.layer_norm.gamma",
    "embeddings.LayerNorm.bias": "encoder.layer_norm.beta",
    "pooler.dense.weight": "pooler.weight",
    "pooler.dense.bias": "pooler.bias",
}
_CELL = {
    "attention.self.query": "attention_cell.proj_query",
    "attention.self.key": "attention_cell.proj_key",
    "attention.self.value": "attention_cell.proj_value",
    "attention.output.dense": "proj",
    "attention.output.LayerNorm": "layer_norm",
    "intermediate.dense": "ffn.ffn_1",
    "output.dense": "ffn.ffn_2",
    "output.LayerNorm": "ffn.layer_norm",
}
_SKIP = ("embeddings.position_ids",)


def gluon_name(hf_name: str) -> str | None:
    """The gluonnlp structured parameter name of an HF BERT parameter; None for buffers."""
    name = hf_name.removeprefix("bert.")
    if name in _SKIP:
        return None
    if name in _TOP:
        return _TOP[name]
    m = _LAYER.match(name)
    if m:
        layer, rest = m.groups()
        module, _, leaf = rest.rpartition(".")
        if module in _CELL:
            if module.endswith("LayerNorm"):
                leaf = {"weight": "gamma", "bias": "beta"}.get(leaf, leaf)
            return f"encoder.transformer_cells.{layer}.{_CELL[module]}.{leaf}"
    raise InputError(f"no gluonnlp BERT parameter for the HF parameter {hf_name!r}")


def load_gluon_bert(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(gluonnlp BERTModel with the folder's weights on the CPU, its config dict); not
    hybridized. Kept per folder (a few per process): loading again returns the same model."""
    return _load_gluon_bert(str(Path(path).resolve()))


@functools.lru_cache(maxsize=2)
def _load_gluon_bert(path: str) -> tuple[Any, dict[str, Any]]:
    folder = Path(path)
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise InputError(
            f"no BERT model found at {str(path)!r}: the Gluon port needs config.json and "
            "model.safetensors"
        )
    cfg = json.loads(cfg_file.read_text())
    _check_config(cfg, str(path))
    try:
        import mxnet as mx
        from gluonnlp.model import BERTEncoder, BERTModel
    except ImportError:
        raise missing_extra("mxnet and gluonnlp", "gluon") from None
    from safetensors.numpy import load_file

    tensors = {k: v for k, v in load_file(str(weights)).items() if gluon_name(k) is not None}
    units = int(cfg["hidden_size"])
    encoder = BERTEncoder(
        num_layers=int(cfg["num_hidden_layers"]),
        units=units,
        hidden_size=int(cfg["intermediate_size"]),
        max_length=int(cfg["max_position_embeddings"]),
        num_heads=int(cfg["num_attention_heads"]),
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
    )
    model = BERTModel(
        encoder,
        vocab_size=int(cfg["vocab_size"]),
        token_type_vocab_size=int(cfg.get("type_vocab_size", 2)),
        units=units,
        embed_size=units,
        use_pooler=any(k.removeprefix("bert.").startswith("pooler.") for k in tensors),
        use_decoder=False,
        use_classifier=False,
    )
    ctx = mx.cpu()
    model.initialize(ctx=ctx)
    ones = mx.nd.ones((1, 2), ctx=ctx)
    model(ones, ones * 0, mx.nd.array([2.0], ctx=ctx))  # resolve deferred shapes
    params = model._collect_params_with_prefix()
    seen = set()
    for hf_name, arr in tensors.items():
        name = gluon_name(hf_name)
        if name not in params or params[name].shape != arr.shape:
            have = params[name].shape if name in params else None
            raise InputError(f"{hf_name} {arr.shape} does not fit {name} {have}")
        params[name].set_data(mx.nd.array(arr, ctx=ctx, dtype="float32"))
        seen.add(name)
    missing = sorted(set(params) - seen)
    if missing:
        raise InputError(f"the weights at {str(path)!r} lack gluonnlp parameters {missing}")
    return model, cfg


def _check_config(cfg: dict[str, Any], where: str) -> None:
    checks = {
        "model_type": ("bert",),
        "hidden_act": ("gelu",),
        "position_embedding_type": ("absolute",),
    }
    for key, allowed in checks.items():
        value = cfg.get(key, allowed[0])
        if value not in allowed:
            raise InputError(
                f"the Gluon port handles BERT encoders ({key} {allowed[0]!r}); {where} has "
                f"{key}={value!r}"
            )
    archs = cfg.get("architectures") or []
    if any(not a.endswith(("Model", "ForMaskedLM", "ForPreTraining")) for a in archs):
        raise InputError(
            f"the Gluon port converts BERT encoders only; {where} is {', '.join(archs)} "
            "(use --framework torch for classifiers)"
        )
