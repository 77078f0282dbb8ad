"""One registry for what is explained (issue 20): ``embgrad.attribute`` and the ``Explainer``
pick their task from ``outputs.route``, so the same request gives the same numbers through
either, and a task registered once serves both. Checked against written-out oracles (one text
or one pair at a time, unpadded, plain autograd)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import embgrad  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from embgrad.explain import Explainer  # noqa: E402
from embgrad.outputs import route  # noqa: E402
from embgrad.outputs.tokens_api import attribute_tokens  # noqa: E402
from oracle_methods import minilm, pooled  # noqa: E402

pytestmark = pytest.mark.hf

TEXTS = ["A man is eating food.", "The new movie is awesome and long", "Rain."]
PAIRS = ["A man eats a meal.", "Nobody liked the film", "It is raining today outside."]


def _grad_norms(model, enc, f) -> tuple[float, np.ndarray]:
    """f(model outputs) of one unpadded text and ‖df/dx_t‖ per token, by plain autograd."""
    x = model.get_input_embeddings().weight.detach()[enc["input_ids"]].clone().requires_grad_()
    rest = {k: v for k, v in enc.items() if k != "input_ids"}
    value = f(model(inputs_embeds=x, **rest))
    (g,) = torch.autograd.grad(value, x)
    return float(value.detach()), g[0].norm(dim=-1).numpy()


def test_every_task_is_listed_and_a_new_one_is_tried_before_one_quantity(monkeypatch):
    monkeypatch.setattr(route, "_ROUTES", list(route._ROUTES))
    assert embgrad.outputs.list_tasks() == [
        "question_answering",
        "token_classification",
        route.ONE_QUANTITY,
    ]

    @embgrad.outputs.register_task("mine", lambda model, req: False)
    def _mine(model, inputs, **kw):  # pragma: no cover - never accepted
        raise AssertionError

    assert embgrad.outputs.list_tasks()[-2:] == ["mine", route.ONE_QUANTITY]
    with pytest.raises(ValueError, match="already registered"):
        embgrad.outputs.register_task("mine", lambda model, req: True)(_mine)


def test_pairs_through_attribute_are_the_explainers_and_the_oracles():
    model, tok = minilm()
    got = embgrad.attribute(model, TEXTS, pairs=PAIRS, tokenizer=tok)
    want = Explainer(model, tok, kind="encoder").explain(TEXTS, PAIRS, hotflip_k=0)
    assert len(got.items) == len(want) == 2 * len(TEXTS)  # text, then its pair
    for g, w in zip(got.items, want, strict=True):
        assert g.tokens == w.tokens
        assert g.loss == pytest.approx(w.loss, rel=1e-5)
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-5, atol=1e-7)
    # the oracle: cos(e_a, stopgrad(e_b)) of one unpadded pair, differentiated w.r.t. a's tokens
    for i, (a, b) in enumerate(zip(TEXTS, PAIRS, strict=True)):
        with torch.no_grad():
            eb = tok([b], return_tensors="pt")
            other = pooled(model(**eb).last_hidden_state, eb["attention_mask"])[0]
        ea = tok([a], return_tensors="pt")
        value, norms = _grad_norms(
            model,
            ea,
            lambda out, m=ea["attention_mask"], o=other: pooled(out.last_hidden_state, m)[0] @ o,
        )
        assert got.items[2 * i].loss == pytest.approx(value, rel=1e-5)
        np.testing.assert_allclose(got.items[2 * i].scores, norms, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def classifier():
    _, tok = minilm()
    torch.manual_seed(3)
    cfg = tf.BertConfig(vocab_size=tok.vocab_size, hidden_size=24, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=40, num_labels=4,
                        id2label={0: "neg", 1: "neutral", 2: "pos", 3: "mixed"},
                        label2id={"neg": 0, "neutral": 1, "pos": 2, "mixed": 3})  # fmt: skip
    return tf.BertForSequenceClassification(cfg).eval(), tok


@pytest.mark.parametrize("target", ["pos", ["mixed", "pos", "neutral"], [1]])
def test_a_class_target_is_one_task_for_attribute_and_the_explainer(classifier, target):
    model, tok = classifier
    got = embgrad.attribute(model, TEXTS, target=target, tokenizer=tok, method="grad_x_input")
    targets = target if isinstance(target, list) else [target]
    want = Explainer(model, tok, kind="classifier").explain(
        TEXTS, targets=targets, method="grad_x_input", hotflip_k=0
    )
    names = targets * len(TEXTS) if len(targets) == 1 else targets
    names = [model.config.id2label[int(t)] if str(t).isdigit() else t for t in names]
    assert [g.target for g in got.items] == [w.target for w in want] == names
    for g, w in zip(got.items, want, strict=True):
        assert g.tokens == w.tokens and g.loss == pytest.approx(w.loss, rel=1e-5)
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-5, atol=1e-7)


def test_attribute_states_what_a_request_lacks_or_mixes(classifier):
    model, tok = classifier
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with pytest.raises(InputError, match="give loss_fn"):
        embgrad.attribute(model, enc)
    with pytest.raises(InputError, match="pairs are texts"):
        embgrad.attribute(model, enc, pairs=PAIRS, tokenizer=tok)
    with pytest.raises(InputError, match="either loss_fn or pairs"):
        embgrad.attribute(model, TEXTS, lambda out: out.logits[:, 0], pairs=PAIRS, tokenizer=tok)
    with pytest.raises(InputError, match="either loss_fn or target"):
        embgrad.attribute(model, enc, lambda out: out.logits[:, 0], target=1)
    with pytest.raises(InputError, match="got 2 targets for 3 texts"):
        embgrad.attribute(model, enc, target=[0, 1])
    with pytest.raises(InputError, match="got 3 texts but 2 pairs"):
        embgrad.attribute(model, TEXTS, pairs=PAIRS[:2], tokenizer=tok)


def test_a_loss_fn_is_its_own_task_and_keeps_the_padding(classifier):
    model, tok = classifier
    enc = tok(TEXTS, padding=True, return_tensors="pt")

    def loss(out):  # the caller's quantity: a logit difference
        return out.logits[:, 2] - out.logits[:, 0]

    got = embgrad.attribute(model, enc, loss)
    for i, text in enumerate(TEXTS):
        value, norms = _grad_norms(model, tok([text], return_tensors="pt"), lambda o: loss(o)[0])
        assert got.items[i].loss == pytest.approx(value, rel=1e-5) and got.items[i].target is None
        np.testing.assert_allclose(got.items[i].scores, norms, rtol=1e-5, atol=1e-7)
    # what a loss_fn reads is unknown: its passes keep the padding; a class's do not need it
    ig = {"method": "integrated_gradients", "n_steps": 4, "internal_batch_size": 1}
    assert embgrad.attribute(model, enc, loss, **ig).raw.info["padding"] == "computed"
    assert embgrad.attribute(model, enc, target=1, **ig).raw.info["padding"] == "skipped"


class _Tagger(torch.nn.Module):
    """A model no built-in task knows: embedding, then a per-token two-way head."""

    embgrad_tagger = True

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.emb = torch.nn.Embedding(40, 6)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.tanh(self.emb(input_ids)))


class _WordIds:
    """A tokenizer of whitespace words into ids 1.. (0 pads), for the toy tagger."""

    def __call__(self, texts):
        rows = [[1 + sum(map(ord, w)) % 39 for w in t.split()] for t in texts]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    def convert_ids_to_tokens(self, ids):
        return [f"w{int(i)}" for i in ids]


def test_a_registered_task_serves_attribute_and_the_explainer(monkeypatch):
    monkeypatch.setattr(route, "_ROUTES", list(route._ROUTES))

    @embgrad.outputs.register_task("tagger", lambda model, req: hasattr(model, "embgrad_tagger"))
    def _run(model, inputs, *, loss_fn, target, tokenizer, **kw):
        batch = tokenizer(inputs) if isinstance(inputs, list) else inputs
        logp = lambda out, rows: torch.log_softmax(out, -1)[..., 1]  # noqa: E731
        return attribute_tokens(model, batch, None, loss_fn=logp, tokenizer=tokenizer, **kw)

    model, tok = _Tagger(), _WordIds()
    texts = ["the cat sat down", "a dog", "birds sing at dawn today"]
    direct = embgrad.attribute(model, texts, tokenizer=tok, method="grad_x_input")
    ex = Explainer(model, tok, batch_size=2)
    with pytest.raises(
        InputError, match=r"several outputs per text; use Explainer\.explain_outputs"
    ):
        ex.explain(texts)
    rows = ex.explain_outputs(texts, method="grad_x_input")
    assert [r["positions"] for r in rows] == [[0, 1, 2, 3], [0, 1], [0, 1, 2, 3, 4]]
    for b, row in enumerate(rows):
        k, t = len(row["positions"]), len(texts[b].split())
        np.testing.assert_allclose(row["scores"], direct.scores[b, :k, :t], rtol=1e-6, atol=0)
        # the oracle: d log p(label 1 at position j) / dx · x, one unpadded text
        ids = tok([texts[b]])["input_ids"]
        for j in range(t):
            x = model.emb(ids).detach().requires_grad_()
            (g,) = torch.autograd.grad(torch.log_softmax(model.head(torch.tanh(x)), -1)[0, j, 1], x)
            np.testing.assert_allclose(row["scores"][j], (g * x).sum(-1)[0].detach().numpy(),
                                       rtol=1e-5, atol=1e-7)  # fmt: skip


def test_a_token_classifier_refuses_pairs_by_name():
    _, tok = minilm()
    cfg = tf.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16, num_labels=2)  # fmt: skip
    model = tf.BertForTokenClassification(cfg).eval()
    with pytest.raises(InputError, match="contexts of question answering"):
        embgrad.attribute(model, ["Paris is nice"], pairs=["x"], tokenizer=tok)
