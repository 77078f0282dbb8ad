"""Question answering through ``embgrad.attribute``: a random-init BertForQuestionAnswering
saved with save_pretrained and loaded through ``hf:PATH``; the span and its two parts against
an oracle running each pair alone, unpadded, one backward per part."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import embgrad  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from embgrad.methods.integrated_gradients import quadrature  # noqa: E402
from embgrad.models.load import load  # noqa: E402

pytestmark = pytest.mark.hf

QUESTIONS = ["Who wrote it?", "Where is the tower of the old city?", "When?"]
CONTEXTS = ["Ada wrote the first program.", "The tower stands in Pisa, Italy.", "In 1843 it ran"]


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    from embgrad.models import minilm

    torch.manual_seed(1)
    cfg = tf.BertConfig(
        vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("qa")
    tf.BertForQuestionAnswering(cfg).save_pretrained(path)
    tf.AutoTokenizer.from_pretrained(minilm.model_path()).save_pretrained(path)
    loaded = load(f"hf:{path}")
    assert loaded.kind == "question_answering"
    return loaded


def _oracle(model, enc_b, span, alphas=(1.0,), weights=(1.0,)):
    """(3, T, D) Σ_a w_a ∂q/∂(αx) for q = span, start, end of one unpadded pair; f (3, 2)."""
    emb = model.get_input_embeddings().weight.detach()
    ids = torch.as_tensor(enc_b["input_ids"])[None]
    tt = torch.as_tensor(enc_b["token_type_ids"])[None]
    x = emb[ids]
    s, e = span

    def parts(out):
        ls = torch.log_softmax(out.start_logits[0], -1)[s]
        le = torch.log_softmax(out.end_logits[0], -1)[e]
        return [ls + le, ls, le]

    grads, f = [], []
    for p in range(3):
        g = torch.zeros_like(x[0])
        for a, w in zip(alphas, weights, strict=True):
            z = (a * x).clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(parts(model(inputs_embeds=z, token_type_ids=tt))[p], z)
            g += w * grad[0]
        grads.append(g.numpy())
        with torch.no_grad():
            f.append([float(parts(model(inputs_embeds=c * x, token_type_ids=tt))[p])
                      for c in (1.0, 0.0)])  # fmt: skip
    return np.stack(grads), np.array(f), x[0].numpy()


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("method", ["gradient", "grad_x_input", "integrated_gradients"])
def test_span_and_parts_match_the_one_backward_per_part_oracle(qa, method):
    model, tok = qa.model, qa.tokenizer
    opts = {"n_steps": 3} if method == "integrated_gradients" else {}
    res = embgrad.attribute(
        model, QUESTIONS, pairs=CONTEXTS, tokenizer=tok, method=method, return_grads=True, **opts
    )
    alphas, weights = quadrature(3, "gausslegendre") if opts else ((1.0,), (1.0,))
    for b, (q, c) in enumerate(zip(QUESTIONS, CONTEXTS, strict=True)):
        enc = tok(q, c)
        n = len(enc["input_ids"])
        seq = enc.sequence_ids()
        ctx = [t for t in range(n) if seq[t] == 1]
        s, e = (int(v) for v in res.span[b])
        assert s <= e < s + res.max_answer_len and s in ctx and e in ctx
        assert res.context_mask[b].tolist()[:n] == [x == 1 for x in seq]
        assert res.question_mask[b].sum() == sum(x == 0 for x in seq)  # special tokens out
        g, f, x = _oracle(model, enc, (s, e), alphas, weights)
        views = [res.scores[b], res.parts["start"][b], res.parts["end"][b]]
        for p, got in enumerate(views):
            if method == "gradient":
                _close(res.grads[b, p, :n], g[p])
            else:
                _close(got[:n], (g[p] * x).sum(-1))
            assert np.all(got[n:] == 0)
        np.testing.assert_allclose(res.quantity[b], f[:, 0], rtol=1e-5, atol=1e-6)
        if method != "gradient":  # linear in the quantity: the parts sum to the span
            np.testing.assert_allclose(
                res.parts["start"][b] + res.parts["end"][b], res.scores[b], rtol=1e-4, atol=1e-6
            )
    p = res.probabilities
    np.testing.assert_allclose(p[:, 0], p[:, 1] * p[:, 2], rtol=1e-6)


def test_predicted_span_is_the_best_within_the_context(qa):
    model, tok = qa.model, qa.tokenizer
    enc = tok(QUESTIONS, CONTEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    res = embgrad.attribute(model, enc, tokenizer=tok, max_answer_len=4)
    for b in range(len(QUESTIONS)):
        ctx = [t for t, v in enumerate(enc.sequence_ids(b)) if v == 1]
        best = max(
            ((s, e) for s in ctx for e in ctx if s <= e < s + 4),
            key=lambda se: float(out.start_logits[b, se[0]] + out.end_logits[b, se[1]]),
        )
        assert tuple(res.span[b]) == best
    forced = embgrad.attribute(model, enc, tokenizer=tok, span=(9, 10))
    assert forced.span.tolist() == [[9, 10]] * 3
    assert forced.info.get("shared_forward")  # three rows per pair from one forward
    with pytest.raises(InputError, match="span must be"):
        embgrad.attribute(model, enc, span=(5, 2))
    with pytest.raises(InputError, match="contexts"):
        embgrad.attribute(model, QUESTIONS, tokenizer=tok)


def test_views_show_question_and_context_apart(qa):
    res = embgrad.attribute(qa.model, QUESTIONS[:1], pairs=CONTEXTS[:1], tokenizer=qa.tokenizer)
    (item,) = res.items
    assert item.source_length == int(res.question_mask[0].sum())
    assert item.text.startswith("Q: ") and " | C: " in item.text
    assert len(item.generated) == 3 and "span" in item.generated[0]
    assert '"kind": "question_answering"' in res.to_json()


def test_writers_refuse_to_overwrite_and_the_notebook_view_is_sandboxed(qa, tmp_path):
    res = embgrad.attribute(qa.model, QUESTIONS[:1], pairs=CONTEXTS[:1], tokenizer=qa.tokenizer)
    assert res._repr_html_().startswith("<iframe srcdoc=")
    for name, write in (("a.json", res.to_json), ("a.html", res.to_html)):
        path = tmp_path / name
        path.write_text("mine")
        with pytest.raises(InputError, match="exists; pass overwrite=True"):
            write(path)
        assert path.read_text() == "mine"
        write(path, overwrite=True)
        assert "question_answering" in path.read_text() or "Q: " in path.read_text()
