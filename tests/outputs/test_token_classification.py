"""Token classification through ``embgrad.attribute``: a random-init BertForTokenClassification
saved with save_pretrained and loaded through ``hf:PATH`` (the bundled MiniLM tokenizer), and a
Gluon tagger (Embedding + BiLSTM + Dense per step) with ``loss_fn(outputs, rows)``; every
(text, position) against an oracle that runs it alone, unpadded, one backward each."""

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

TEXTS = ["Paris is lovely in spring", "Ada Lovelace wrote the first program for it", "hi"]
LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    from embgrad.models import minilm

    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )  # fmt: skip
    path = tmp_path_factory.mktemp("ner")
    tf.BertForTokenClassification(cfg).save_pretrained(path)
    tf.AutoTokenizer.from_pretrained(minilm.model_path()).save_pretrained(path)
    return load(f"hf:{path}")


def _oracle(model, ids, labels, positions, alphas=(1.0,), weights=(1.0,)):
    """(K, T, D) Σ_a w_a ∂ log p(label_k | α x) / ∂(α x) for one unpadded text, one backward
    per (position, α), and (K,) the quantities at x and at 0."""
    emb = model.get_input_embeddings().weight.detach()
    x = emb[torch.as_tensor(ids)][None].double().float()
    out, f = [], []
    for t, y in zip(positions, labels, strict=True):
        g = torch.zeros_like(x[0])
        for a, w in zip(alphas, weights, strict=True):
            e = (a * x).clone().requires_grad_(True)
            logits = model(inputs_embeds=e).logits[0, t]
            q = torch.log_softmax(logits, -1)[y]
            (grad,) = torch.autograd.grad(q, e)
            g += w * grad[0]
        with torch.no_grad():
            f.append([
                float(torch.log_softmax(model(inputs_embeds=s * x).logits[0, t], -1)[y])
                for s in (1.0, 0.0)
            ])  # fmt: skip
        out.append(g.numpy())
    return np.stack(out), np.array(f), x[0].numpy()


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "method", ["gradient", "grad_x_input", "integrated_gradients", "smoothgrad"]
)
def test_every_position_matches_the_alone_unpadded_oracle(ner, method):
    model, tok = ner.model, ner.tokenizer
    opts = {"n_steps": 3} if method == "integrated_gradients" else {}
    if method == "smoothgrad":
        opts = {"sigma": 0.0, "n_samples": 2}  # noise-free: the gradient, through repeated rows
    res = embgrad.attribute(model, TEXTS, tokenizer=tok, method=method, return_grads=True, **opts)
    enc = tok(TEXTS)["input_ids"]
    # gradient and grad × input take every position from one forward (batched cotangents)
    assert res.info.get("shared_forward", False) == (method in ("gradient", "grad_x_input"))
    b_n, k_n, t_n = res.scores.shape
    assert (b_n, t_n) == (3, max(len(r) for r in enc))
    assert k_n == max(len(r) - 2 for r in enc)  # every real non-special token
    alphas, weights = (1.0,), (1.0,)
    if method == "integrated_gradients":
        alphas, weights = quadrature(3, "gausslegendre")
    for b, ids in enumerate(enc):
        pos = np.arange(1, len(ids) - 1)
        assert res.positions[b, : pos.size].tolist() == pos.tolist()
        assert (res.positions[b, pos.size :] == -1).all()
        assert np.isnan(res.scores[b, pos.size :]).all()
        labels = res.labels[b, : pos.size]
        g, f, x = _oracle(model, ids, labels, pos, alphas, weights)
        n = len(ids)
        if method in ("gradient", "smoothgrad"):
            _close(res.grads[b, : pos.size, :n], g)
        elif method == "grad_x_input":
            _close(res.scores[b, : pos.size, :n], (g * x).sum(-1))
        else:
            attr = g * x
            _close(res.scores[b, : pos.size, :n], attr.sum(-1))
            want_delta = np.abs(attr.sum((1, 2)) - (f[:, 0] - f[:, 1]))
            np.testing.assert_allclose(res.delta[b, : pos.size], want_delta, atol=1e-4)
        assert np.all(res.scores[b, : pos.size, n:] == 0)  # padding columns
        np.testing.assert_allclose(res.quantity[b, : pos.size], f[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.probabilities[b, : pos.size], np.exp(f[:, 0]), rtol=1e-5)


def test_predicted_labels_given_labels_and_positions(ner):
    model, tok = ner.model, ner.tokenizer
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1).numpy()
    res = embgrad.attribute(model, enc, tokenizer=tok, positions=[[1, 3], [2]])
    assert res.positions.tolist() == [[1, 3], [2, -1]]
    assert res.labels.tolist() == [[pred[0, 1], pred[0, 3]], [pred[1, 2], -1]]
    assert res.label_names[0][0] == LABELS[pred[0, 1]]
    forced = embgrad.attribute(
        model, enc, target=[["B-PER", 0], ["I-LOC"]], positions=[[1, 3], [2]]
    )
    assert forced.labels.tolist() == [[3, 0], [2, -1]]
    assert np.all(forced.probabilities[:, :1] < 1)
    with pytest.raises(InputError, match="unknown label"):
        embgrad.attribute(model, enc, target="B-XYZ")
    with pytest.raises(InputError, match="outside its"):
        embgrad.attribute(model, enc, positions=[[1, 99], [2]])
    with pytest.raises(InputError, match="tokenize first"):
        embgrad.attribute(model, ["raw text"])
    with pytest.raises(InputError, match="does not attribute token labels"):
        embgrad.attribute(model, enc, method="hotflip")


def test_word_rows_use_each_words_first_sub_token(ner):
    tok = ner.tokenizer
    res = embgrad.attribute(ner.model, ["Lovelace wrote"], tokenizer=tok, words=True)
    enc = tok(["Lovelace wrote"])
    first = sorted({enc.word_ids(0).index(w) for w in set(enc.word_ids(0)) if w is not None})
    assert res.words and res.positions[0].tolist() == first
    assert len(first) < len(enc["input_ids"][0]) - 2  # "Lovelace" is several sub-tokens
    assert res.row_names == [["Lovelace", "wrote"]]
    assert [g.split(" → ")[0] for g in res.items[0].generated] == ["Lovelace", "wrote"]


def test_views_write_one_matrix_per_text(ner, tmp_path):
    res = embgrad.attribute(ner.model, TEXTS[:2], tokenizer=ner.tokenizer)
    items = res.items
    assert len(items) == 2
    assert len(items[0].scores) == int((res.positions[0] >= 0).sum())
    assert "→" in items[0].generated[0] and "probability" in items[0].step_scores
    html = res.to_html()
    assert "Paris" in html.lower() or "paris" in html
    assert '"kind": "token_classification"' in res.to_json()
    pytest.importorskip("matplotlib")
    res.plot(tmp_path / "ner.png")
    assert (tmp_path / "ner.png").stat().st_size > 0
    notebook = res._repr_html_()  # sandboxed: the report's CSS stays out of the notebook's
    assert notebook.startswith("<iframe srcdoc=") and " sandbox" in notebook
    assert repr(res).count("\n") == 0 and "explained=" in repr(res)  # one line, no arrays
    for path, write in ((tmp_path / "ner.png", res.plot), (tmp_path / "a.json", res.to_json),
                        (tmp_path / "a.html", res.to_html)):  # fmt: skip
        path.write_text("mine")
        with pytest.raises(InputError, match="exists; pass overwrite=True"):
            write(path)
        assert path.read_text() == "mine"
        write(path, overwrite=True)
        assert path.stat().st_size > 100


@pytest.mark.parametrize("vmap", [False, True])
def test_one_shared_forward_equals_replicated_rows(ner, vmap, monkeypatch):
    """The batched-cotangent path (one forward) and the replicated rows (check="exact": the
    engine's own per-sample loop) agree; a batch-coupling model falls back to the engine, which
    refuses it."""
    from embgrad.backends import torch as torch_backend

    monkeypatch.setattr(torch_backend, "VMAP_ON_CPU", vmap)  # one vmapped backward, or a loop
    model, tok = ner.model, ner.tokenizer
    fast = embgrad.attribute(model, TEXTS, tokenizer=tok, method="grad_x_input")
    slow = embgrad.attribute(model, TEXTS, tokenizer=tok, method="grad_x_input", check="exact")
    assert fast.info.get("shared_forward") and not slow.info.get("shared_forward")
    np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(fast.labels, slow.labels)

    class Coupled(torch.nn.Module):  # adds the batch mean: every sample reads the others
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            return {"logits": out.logits + out.logits.mean(0, keepdim=True)}

    from embgrad.errors import CouplingError

    with pytest.raises(CouplingError):
        embgrad.attribute(Coupled(), TEXTS, tokenizer=tok, positions=[[1], [1], [1]])
