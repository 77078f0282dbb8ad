"""Single texts on the bundled encoder: zero-shot labels by similarity, against a written-out
per-text oracle (one text, one label at a time, no padding, plain autograd)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from embgrad.explain import Explainer  # noqa: E402
from embgrad.tasks.zeroshot import DEFAULT_LABELS, TEMPERATURE  # noqa: E402
from oracle_methods import minilm, pooled  # noqa: E402

pytestmark = pytest.mark.hf

TEXTS = ["I loved this movie, the acting was wonderful.", "The match ended two nil."]
LABELS = ["cinema", "football", "cooking"]


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    minilm()
    return Explainer.from_spec()


def oracle(text: str, labels: list[str], target: int | None) -> tuple[float, int, np.ndarray]:
    """(log p(label | text), the label, ‖df/dx_t‖ per token) for one text, written out."""
    model, tok = minilm()
    with torch.no_grad():
        rows = []
        for label in labels:
            enc = tok([label], return_tensors="pt")
            rows.append(pooled(model(**enc).last_hidden_state, enc["attention_mask"])[0])
        lab = torch.stack(rows)
    enc = tok([text], return_tensors="pt")
    x = model.embeddings.word_embeddings.weight.detach()[enc["input_ids"]].clone()
    x.requires_grad_()
    out = model(inputs_embeds=x, attention_mask=enc["attention_mask"])
    e = pooled(out.last_hidden_state, enc["attention_mask"])
    logp = torch.log_softmax((e @ lab.T)[0] / TEMPERATURE, dim=-1)
    k = int(logp.argmax()) if target is None else target
    (g,) = torch.autograd.grad(logp[k], x)
    return float(logp[k].detach()), k, g[0].norm(dim=-1).numpy()


@pytest.mark.parametrize("target", [None, "football", 2])
def test_zero_shot_scores_match_the_per_text_oracle(explainer, target):
    items = explainer.explain(TEXTS, None, None if target is None else [target],
                              candidate_labels=LABELS, hotflip_k=0)  # fmt: skip
    for text, item in zip(TEXTS, items, strict=True):
        want = None if target is None else (target if isinstance(target, int) else 1)
        f, k, g = oracle(text, LABELS, want)
        assert item.target == LABELS[k]
        assert item.loss == pytest.approx(f, rel=1e-5, abs=1e-6)
        assert np.allclose(item.scores, g, rtol=1e-5, atol=1e-6 * g.max())
    if target is None:
        assert [i.target for i in items] == ["cinema", "football"]  # a sanity check of meaning


def test_single_texts_without_labels_explain_the_stated_default(explainer):
    task = explainer.task(TEXTS[:1])
    assert task.note is not None and "'positive', 'negative'" in task.note
    (item,) = explainer.explain(TEXTS[:1], hotflip_k=0)
    f, k, g = oracle(TEXTS[0], list(DEFAULT_LABELS), None)
    assert item.target == DEFAULT_LABELS[k] == "positive"
    assert item.loss == pytest.approx(f, rel=1e-5)
    assert np.allclose(item.scores, g, rtol=1e-5, atol=1e-6 * g.max())


def test_integrated_gradients_on_zero_shot_are_complete(explainer):
    # the default baseline is zeros (issue 23): a longer path than [PAD]'s, so 64 steps
    # (delta 5e-4; 32 steps: 1.4e-2, where [PAD] gave 5e-4)
    (item,) = explainer.explain(TEXTS[1:], candidate_labels=LABELS, method="integrated_gradients",
                                n_steps=64, hotflip_k=1)  # fmt: skip
    assert item.delta is not None and item.delta < 0.05 * abs(item.loss) + 1e-2
    assert len(item.hotflip) == 1


def test_label_embeddings_are_computed_once_per_explainer(explainer, monkeypatch):
    calls = []
    embed = explainer.embed

    def counted(texts):
        calls.append(tuple(texts))
        return embed(texts)

    monkeypatch.setattr(explainer, "embed", counted)
    monkeypatch.setattr(explainer, "_embedded", {})
    explainer.explain(TEXTS[:1], candidate_labels=LABELS, hotflip_k=0)
    first = dict(explainer._embedded)
    explainer.explain(TEXTS[1:], candidate_labels=LABELS, hotflip_k=0)
    assert calls == [tuple(LABELS)] * 2 and explainer._embedded.keys() == first.keys()


@pytest.mark.gluon
def test_zero_shot_on_the_gluon_port_matches_torch(explainer):
    pytest.importorskip("mxnet")
    pytest.importorskip("gluonnlp")
    gluon = Explainer.from_spec(framework="gluon")
    got = gluon.explain(TEXTS, candidate_labels=LABELS, hotflip_k=0)
    want = explainer.explain(TEXTS, candidate_labels=LABELS, hotflip_k=0)
    for g, w in zip(got, want, strict=True):
        assert g.target == w.target and g.loss == pytest.approx(w.loss, rel=1e-4, abs=1e-5)
        assert np.allclose(g.scores, w.scores, rtol=1e-3, atol=1e-4 * max(w.scores))


def test_attribute_takes_candidate_labels_and_a_batch_encoding(explainer):
    import embgrad

    model, tok = minilm()
    enc = tok(TEXTS, padding=True, return_tensors="pt")  # a BatchEncoding: a Mapping, not a dict
    assert not isinstance(enc, dict)
    att = embgrad.attribute(model, enc, candidate_labels=LABELS, tokenizer=tok)
    want = explainer.explain(TEXTS, candidate_labels=LABELS, hotflip_k=0)
    for got, w in zip(att.items, want, strict=True):
        assert got.target == w.target and got.tokens == w.tokens
        assert got.loss == pytest.approx(w.loss, rel=1e-5)
        assert np.allclose(got.scores, w.scores, rtol=1e-5, atol=1e-6 * max(w.scores))
    one = embgrad.attribute(model, enc, candidate_labels=LABELS, tokenizer=tok, target="cooking",
                            method="integrated_gradients", n_steps=8)  # fmt: skip
    assert [i.target for i in one.items] == ["cooking", "cooking"]
    with pytest.raises(embgrad.InputError, match="need tokenizer="):
        embgrad.attribute(model, enc, candidate_labels=LABELS)
    with pytest.raises(embgrad.InputError, match="not one of the labels"):
        embgrad.attribute(model, enc, candidate_labels=LABELS, tokenizer=tok, target="x")


def test_explain_shows_its_batches_on_a_terminal(explainer, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    from embgrad import _progress

    monkeypatch.setattr(_progress, "_tty", lambda: True)
    monkeypatch.setattr(_progress, "DELAY_S", 0.0)
    monkeypatch.setattr(explainer, "batch_size", 2)
    explainer.explain([*TEXTS, "One more."], candidate_labels=LABELS, hotflip_k=0)
    err = capsys.readouterr().err
    assert "embgrad gradient" in err and "2/2" in err and "batch" in err
