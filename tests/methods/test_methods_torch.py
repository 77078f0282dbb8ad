"""The attribution methods on the real all-MiniLM-L6-v2, against slow references and Captum.

Each method's own contract (shapes, pass sizes, padding, its per-text oracle, in both
frameworks) is ``test_method_contract.py``; here: what needs a real transformer and tokenizer
(Captum, the completeness delta's convergence, HotFlip's ranking with special tokens, masks
cutting BERT's passes, the one-call ``embgrad.attribute``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import embgrad  # noqa: E402
from embgrad.methods import get_method  # noqa: E402
from embgrad.methods import plan as plan_module  # noqa: E402
from oracle_methods import CosToConstant, encode, minilm, naive_grads, sentences  # noqa: E402

pytestmark = pytest.mark.hf


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module")
def batch():
    model, tok = minilm()
    enc = encode(sentences(3))
    return model, tok, enc, CosToConstant(enc["attention_mask"])


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore:.*deprecated - use:DeprecationWarning")  # captum → matplotlib
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_equal_captum_layer_integrated_gradients(batch, rule):
    from captum.attr import LayerIntegratedGradients

    model, tok, enc, f = batch
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def forward(ids, mask, c):
        from oracle_methods import pooled

        return (pooled(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask) * c).sum(
            -1
        )

    ours = get_method("integrated_gradients")(model).attribute(
        enc, f, n_steps=6, rule=rule, baseline="pad", internal_batch_size=7
    )
    lig = LayerIntegratedGradients(forward, model.embeddings.word_embeddings)
    attr, delta = lig.attribute(
        ids,
        baselines=torch.full_like(ids, tok.pad_token_id),
        additional_forward_args=(mask, f.c),
        n_steps=6,
        method=rule,
        internal_batch_size=7,
        return_convergence_delta=True,
    )
    assert rel(ours.attributions, attr.detach().numpy()) < 1e-4
    assert np.allclose(ours.delta, delta.abs().numpy(), rtol=1e-3, atol=1e-6)


def test_integrated_gradients_delta_shrinks_as_steps_grow(batch):
    model, _, enc, f = batch
    ig = get_method("integrated_gradients")(model)
    deltas = [
        ig.attribute(enc, f, n_steps=n, rule="riemann_middle", baseline="zeros").delta.sum()
        for n in (2, 6, 18)
    ]
    assert deltas[0] > deltas[1] > deltas[2]
    assert deltas[2] < 0.2 * deltas[0]


def test_hotflip_scores_equal_the_naive_first_order_estimate(batch):
    model, tok, enc, f = batch
    _, g, _ = naive_grads(enc, f)
    table = model.embeddings.word_embeddings.weight.detach().numpy().astype(np.float64)
    special = tok.all_special_ids
    hf = get_method("hotflip")(model).attribute(
        enc, f, k=4, direction="abs", exclude_ids=special, mask=enc["attention_mask"].numpy()
    )
    ids = enc["input_ids"].numpy()
    for b, cands in enumerate(hf.hotflip):
        positions = {c["position"] for c in cands}
        assert positions == {
            t
            for t in range(ids.shape[1])
            if enc["attention_mask"][b, t] and ids[b, t] not in special
        }
        for c in cands[:8]:  # a few positions: every candidate's score, written out
            t, w, w2 = c["position"], c["token_id"], c["replacement_id"]
            assert w == ids[b, t] and w2 not in special and w2 != w
            naive = float((table[w2] - table[w]) @ g[b, t])
            assert abs(c["estimate"] - naive) < 1e-4 * max(1.0, abs(naive))
        t = cands[0]["position"]  # the ranking at one position: brute force over the table
        full = (table - table[ids[b, t]]) @ g[b, t]
        full[[*special, ids[b, t]]] = 0.0
        best = np.argsort(-np.abs(full))[:4]
        at_t = sorted((c for c in cands if c["position"] == t), key=lambda c: c["rank"])
        assert [c["replacement_id"] for c in at_t] == best.tolist()


def test_attribute_explains_a_classifier_target_with_token_strings(monkeypatch):
    from transformers import BertConfig, BertForSequenceClassification

    _, tok = minilm()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
        label2id={"neg": 0, "neu": 1, "pos": 2},
    )  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    enc = tok(["good film", "a <script> tag here"], padding=True, return_tensors="pt")
    att = embgrad.attribute(model, dict(enc), target="pos", method="grad_x_input", tokenizer=tok)
    with torch.no_grad():
        logp = torch.log_softmax(model(**enc).logits, -1)[:, 2].numpy()
    assert np.allclose(att.losses, logp, atol=1e-5)
    assert att.tokens[0] == ["[CLS]", "good", "film", "[SEP]"]
    assert [len(s) for s in att.scores] == [4, 8]
    assert att.items[1].target == "pos" and att.delta is None
    assert '"method": "grad_x_input"' in att.to_json()
    assert "&lt;" in att.to_html() and att.to_html().count("<script>") == 1  # the tooltip's

    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)  # tiny passes are worth it here
    ig = embgrad.attribute(model, dict(enc), target="pos", method="integrated_gradients", n_steps=3)
    assert {length for _, length in ig.raw.info["passes"]} == {4, 8}  # skips the padding
    plain = get_method("integrated_gradients")(model).attribute(
        dict(enc), lambda out: torch.log_softmax(out.logits, -1)[:, 2], n_steps=3
    )
    assert {length for _, length in plain.info["passes"]} == {8}
    assert rel(ig.raw.attributions, plain.attributions) < 1e-5
    assert np.abs(ig.raw.delta - plain.delta).max() < 1e-6
    with pytest.raises(embgrad.InputError, match=r"unknown target 'great'.*neg, neu, pos"):
        embgrad.attribute(model, dict(enc), target="great")
    with pytest.raises(embgrad.InputError, match=r"unknown method 'lime'.*gradient"):
        embgrad.attribute(model, dict(enc), target=0, method="lime")
    with pytest.raises(embgrad.InputError, match=r"no option.*n_step.*n_steps"):
        embgrad.attribute(model, dict(enc), target=0, method="integrated_gradients", n_step=3)


@pytest.fixture(scope="module")
def ragged():
    model, _ = minilm()
    s = sentences(2)
    enc = encode(["Dogs bark.", s[0], f"{s[0]} {s[1]}"])  # three lengths, padded to the longest
    return model, enc, CosToConstant(enc["attention_mask"])


@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("integrated_gradients", {"n_steps": 4, "baseline": "pad"}),
        ("integrated_gradients", {"n_steps": 3, "baseline": "zeros", "rule": "riemann_left"}),
        ("integrated_gradients", {"n_steps": 3, "baseline": "per-sample array"}),
        ("smoothgrad", {"n_samples": 3, "sigma": 0.3, "reduce": "norm"}),
    ],
)
def test_a_mask_skips_the_padding_and_changes_no_result(ragged, monkeypatch, method, opts):

    model, enc, f = ragged
    if opts.get("baseline") == "per-sample array":  # (B, T, D): cut with the rows
        shape = (*enc["input_ids"].shape, 384)
        opts = {**opts, "baseline": np.random.default_rng(0).normal(0, 0.05, shape)}
    m = get_method(method)(model)
    full = m.attribute(enc, f, **opts)
    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)  # one pass per length
    monkeypatch.setattr(plan_module, "MAX_PAD_FRACTION", 0.0)
    cut = m.attribute(enc, f, mask=enc["attention_mask"], internal_batch_size=5, **opts)
    lengths = enc["attention_mask"].sum(1).tolist()
    t = enc["input_ids"].shape[1]
    assert len(set(lengths)) == 3 and {length for _, length in full.info["passes"]} == {t}
    assert {length for _, length in cut.info["passes"]} == set(lengths)
    assert all(n <= 5 for n, _ in cut.info["passes"])
    assert sum(n * length for n, length in cut.info["passes"]) < 0.8 * sum(
        n * length for n, length in full.info["passes"]
    )
    assert rel(cut.attributions, full.attributions) < 1e-5
    assert rel(cut.scores, full.scores) < 1e-5
    pad = ~enc["attention_mask"].numpy().astype(bool)
    assert (cut.attributions[pad] == 0).all() and (cut.scores[pad] == 0).all()
    if cut.delta is not None:
        assert np.abs(cut.delta - full.delta).max() < 1e-6


def test_hotflip_verified_change_is_the_model_run_on_the_flipped_text(batch):
    model, tok, enc, f = batch
    mask = enc["attention_mask"]
    hf = get_method("hotflip")(model).attribute(
        enc, f, k=2, direction="decrease", exclude_ids=tok.all_special_ids, mask=mask.numpy(),
        verify=5, verify_rows=3,
    )  # fmt: skip
    assert hf.info["direction"] == "decrease"
    ids = enc["input_ids"]
    with torch.no_grad():
        base = [float(f.one(model(input_ids=ids[b : b + 1], attention_mask=mask[b : b + 1])
                            .last_hidden_state, b)) for b in range(ids.shape[0])]  # fmt: skip
    for b, cands in enumerate(hf.hotflip):
        done = [c for c in cands if c["verified"] is not None]
        assert len(done) == 5 and cands[:5] == done  # verified first ...
        assert [c["verified"] for c in done] == sorted(c["verified"] for c in done)  # ... best
        # picked: each position's best estimate (lowest first), then each one's second best
        picked = sorted(cands, key=lambda c: (c["rank"], c["estimate"]))[:5]
        assert {id(c) for c in picked} == {id(c) for c in done}
        for c in done:
            flipped = ids[b : b + 1].clone()
            flipped[0, c["position"]] = c["replacement_id"]
            with torch.no_grad():
                out = model(input_ids=flipped, attention_mask=mask[b : b + 1])
            want = float(f.one(out.last_hidden_state, b)) - base[b]
            assert abs(c["verified"] - want) < 1e-5 * max(1.0, abs(want))
