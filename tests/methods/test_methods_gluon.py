"""The same all-MiniLM-L6-v2 weights in gluonnlp's BERTModel (the Gluon port) and in PyTorch:
the methods give the same per-token gradients in both frameworks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
mx = pytest.importorskip("mxnet")
pytest.importorskip("gluonnlp")
torch = pytest.importorskip("torch")

from embgrad.methods import get_method  # noqa: E402
from embgrad.models.minilm import model_path  # noqa: E402
from embgrad.models.minilm_gluon import gluon_name, load_gluon_bert  # noqa: E402
from embgrad.tasks.heads import PairSimilarity  # noqa: E402
from oracle_methods import minilm  # noqa: E402

pytestmark = [pytest.mark.gluon, pytest.mark.hf]

TEXTS = [
    "A man is playing a guitar on stage.",
    "A musician performs a song.",
    "The cat sat on the mat.",
    "A dog is barking in the garden today.",
]


@pytest.fixture(scope="module")
def models():
    gluon_model, _ = load_gluon_bert(model_path())
    torch_model, tok = minilm()
    torch.set_num_threads(2)  # importing mxnet drops torch to one thread
    enc = tok(TEXTS, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    t_in = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask)}
    g_in = (
        mx.nd.array(ids),
        mx.nd.array(enc["token_type_ids"]),
        mx.nd.array(mask.sum(1)),
    )
    partner = np.arange(len(TEXTS)) ^ 1
    t_mask, g_mask = t_in["attention_mask"], mx.nd.array(mask)

    def t_loss():
        return PairSimilarity(partner, lambda rows: t_mask[torch.as_tensor(rows)])

    def g_loss():
        return PairSimilarity(partner, lambda rows: mx.nd.take(g_mask, mx.nd.array(rows)))

    return (torch_model, t_in, t_loss), (gluon_model, g_in, g_loss), mask.astype(bool)


def test_every_hf_parameter_maps_onto_one_gluon_parameter():
    from safetensors.numpy import load_file

    names = [gluon_name(k) for k in load_file(str(model_path() / "model.safetensors"))]
    mapped = [n for n in names if n is not None]
    assert len(mapped) == len(set(mapped)) == 103
    model, _ = load_gluon_bert(model_path())
    assert set(mapped) == set(model._collect_params_with_prefix())


def test_per_token_gradients_agree_across_frameworks(models):
    (tm, t_in, t_loss), (gm, g_in, g_loss), mask = models
    t = get_method("gradient")(tm).attribute(t_in, t_loss())
    g = get_method("gradient")(gm).attribute(g_in, g_loss())
    scale = np.abs(t.attributions[mask]).max()
    assert np.abs(g.attributions[mask] - t.attributions[mask]).max() < 1e-4 * scale
    assert np.allclose(g.losses, t.losses, atol=1e-5)
    assert np.abs(g.scores - t.scores)[mask].max() < 1e-4 * t.scores.max()


def test_integrated_gradients_agree_across_frameworks(models):
    (tm, t_in, t_loss), (gm, g_in, g_loss), mask = models
    opts = {"n_steps": 4, "baseline": "pad", "pad_id": 0, "internal_batch_size": 6}
    t = get_method("integrated_gradients")(tm).attribute(t_in, t_loss(), **opts)
    g = get_method("integrated_gradients")(gm).attribute(g_in, g_loss(), **opts)
    scale = np.abs(t.attributions).max()
    assert np.abs(g.attributions[mask] - t.attributions[mask]).max() < 1e-4 * scale
    assert np.allclose(g.delta, t.delta, atol=1e-5)


def test_explain_with_the_gluon_framework_matches_torch():
    from embgrad.explain import Explainer

    a, b = TEXTS[0::2], TEXTS[1::2]
    g = Explainer.from_spec(framework="gluon").explain(a, b, hotflip_k=2)
    torch.set_num_threads(2)
    t = Explainer.from_spec().explain(a, b, hotflip_k=2)
    for x, y in zip(g, t, strict=True):
        assert x.tokens == y.tokens and x.loss == pytest.approx(y.loss, abs=1e-5)
        assert np.abs(np.subtract(x.scores, y.scores)).max() < 1e-4 * max(y.scores)
        assert x.table_grad_norm == pytest.approx(y.table_grad_norm, rel=1e-4)
        assert [h["replacement"] for h in x.hotflip] == [h["replacement"] for h in y.hotflip]
        assert np.allclose(
            [h["verified"] for h in x.hotflip], [h["verified"] for h in y.hotflip], atol=1e-5
        )
