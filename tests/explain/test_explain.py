"""The Explainer on the bundled MiniLM, an HF classifier folder and a user factory."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from embgrad.errors import InputError  # noqa: E402
from embgrad.explain import Explainer, TokenAttribution  # noqa: E402
from embgrad.methods import plan as plan_module  # noqa: E402
from oracle_methods import minilm, pooled  # noqa: E402

pytestmark = pytest.mark.hf

A = ["A man is playing a guitar on stage.", "The cat sat on the mat."]
B = ["A musician performs a song with his guitar.", "A dog is barking in the garden."]


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    minilm()  # the session's one load (cached by the loader)
    return Explainer.from_spec()


def test_pairs_give_text_then_pair_with_the_cosine_similarity(explainer):
    items = explainer.explain(A, B, hotflip_k=2)
    assert [i.text for i in items] == [A[0], B[0], A[1], B[1]]
    assert all(isinstance(i, TokenAttribution) and i.method == "gradient" for i in items)
    model, tok = minilm()
    enc = tok([A[0], B[0]], padding=True, return_tensors="pt")
    with torch.no_grad():
        e = pooled(model(**enc).last_hidden_state, enc["attention_mask"])
    cos = float(e[0] @ e[1])
    assert items[0].loss == pytest.approx(cos, abs=1e-5) and items[1].loss == items[0].loss
    assert items[0].tokens[0] == "[CLS]" and items[0].tokens[-1] == "[SEP]"
    assert len(items[0].scores) == len(items[0].tokens)
    assert all(i.table_grad_norm > 0 and i.delta is None and not i.truncated for i in items)
    for i in items:
        assert len(i.hotflip) == 2 and len({h["position"] for h in i.hotflip}) == 2
        for h in i.hotflip:
            assert i.tokens[h["position"]] == h["token"]
            assert h["replacement"] not in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")
            assert not h["replacement"].startswith("[unused")


def test_pair_scores_match_a_batch_of_one_run(explainer):
    both = explainer.explain(A, B, method="grad_x_input", hotflip_k=0)
    alone = explainer.explain(A[1:], B[1:], method="grad_x_input", hotflip_k=0)
    assert np.allclose(both[2].scores, alone[0].scores, atol=1e-6)
    assert np.allclose(both[3].scores, alone[1].scores, atol=1e-6)
    assert both[0].hotflip == []


def test_integrated_gradients_report_a_small_delta(explainer):
    items = explainer.explain(A[:1], B[:1], method="integrated_gradients", n_steps=16)
    for i in items:
        assert i.delta is not None and i.delta < 0.05 * max(abs(i.loss), 1e-3) + 1e-3
        assert i.method == "integrated_gradients"


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_skipping_the_padding_changes_no_score(explainer, monkeypatch, method):
    from embgrad.methods import _passes

    assert explainer.skip_padding  # an HF transformer: on by default
    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)  # one pass per length
    monkeypatch.setattr(plan_module, "MAX_PAD_FRACTION", 0.0)
    planned: list[list[int]] = []
    plan = _passes.plan_passes

    def spy(rows, chunk, lengths, full):
        passes = plan(rows, chunk, lengths, full)
        if lengths is not None:  # a plan that cuts the padding
            planned.append([length for _, length in passes])
        return passes

    monkeypatch.setattr(_passes, "plan_passes", spy)
    verdicts: list[str | None] = []
    check = _passes._padding_matters

    def checked(*args):
        verdicts.append(check(*args))
        return verdicts[-1]

    monkeypatch.setattr(_passes, "_padding_matters", checked)
    opts = {"n_steps": 3} if method == "integrated_gradients" else {"n_samples": 2}
    cut = explainer.explain(A, B, method=method, hotflip_k=0, **opts)
    monkeypatch.setattr(explainer, "skip_padding", False)
    full = explainer.explain(A, B, method=method, hotflip_k=0, **opts)
    lengths = sorted({len(i.tokens) for i in full})
    assert len(lengths) > 1 and planned == [lengths]  # with skip_padding only, one per length
    assert verdicts == [None]  # MiniLM ignores the padding: the cut plan ran
    for c, f in zip(cut, full, strict=True):
        assert c.tokens == f.tokens
        assert np.abs(np.subtract(c.scores, f.scores)).max() < 1e-5 * np.abs(f.scores).max()
        if f.delta is not None:
            assert c.delta == pytest.approx(f.delta, abs=1e-6)


def test_skipping_the_padding_is_off_for_models_that_may_read_it():
    class Rnn(torch.nn.Module):
        def forward(self, ids):
            return ids

    def tokenize(texts):
        return {"input_ids": torch.ones(len(texts), 3, dtype=torch.long)}

    assert not Explainer(Rnn(), tokenize=tokenize).skip_padding
    assert Explainer(Rnn(), tokenize=tokenize, skip_padding=True).skip_padding


def test_long_texts_are_truncated_and_flagged(explainer):
    long = "word " * 400
    items = explainer.explain([long, "short"], [A[0], B[0]], hotflip_k=0)
    assert items[0].truncated and len(items[0].tokens) == explainer.max_length == 256
    assert not any(i.truncated for i in items[1:])
    assert items[0].n_tokens == 402 and items[1].n_tokens is None  # 400 words + [CLS], [SEP]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e.explain(["ok", "  "], ["a", "b"]), "text 1 is empty"),
        (lambda e: e.explain(["ok"], [""]), "pair 0 is empty"),
        (lambda e: e.explain([], []), "no texts given"),
        (lambda e: e.explain(["ok"], ["a", "b"]), "1 texts but 2 pairs"),
        (lambda e: e.explain(["ok"], ["a"], method="lime"), "unknown method 'lime'.*gradient"),
        (lambda e: e.explain(["ok"], ["a"], candidate_labels=["x", "y"]), "one or the other"),
        (lambda e: e.explain(["ok"], candidate_labels=["x"]), "at least two labels"),
        (lambda e: e.explain(["ok"], candidate_labels=["x", "x"]), "labels repeated: 'x'"),
        (lambda e: e.explain(["ok"], None, ["z"], candidate_labels=["x", "y"]), "not one of"),
        (lambda e: e.explain(["ok"], None, ["neutral"]), "not one of the labels: 'positive'"),
        (lambda e: e.explain(["ok"], ["a"], method="smoothgrad", steps=3), "no option.*steps"),
    ],
)
def test_bad_requests_raise_input_errors(explainer, call, message):
    with pytest.raises(InputError, match=message):
        call(explainer)


def test_bad_specs_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="model path does not exist"):
        Explainer.from_spec(f"hf:{tmp_path}/nothing")
    with pytest.raises(InputError, match="no model found"):
        Explainer.from_spec(f"hf:{tmp_path}")
    with pytest.raises(InputError, match="cannot import module 'no_such_mod_xyz'"):
        Explainer.from_spec("module:no_such_mod_xyz:make")
    with pytest.raises(InputError, match="framework='jax'"):
        Explainer.from_spec(framework="jax")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    _, tok = minilm()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1}, architectures=["BertForSequenceClassification"],
    )  # fmt: skip
    path = tmp_path_factory.mktemp("clf")
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_an_hf_classifier_folder_explains_its_target_and_prediction(classifier_dir):
    ex = Explainer.from_spec(f"hf:{classifier_dir}")
    assert ex.kind == "classifier" and ex.max_length == 512
    items = ex.explain(["great movie", "awful plot"], targets=["positive"])
    assert [i.target for i in items] == ["positive", "positive"]
    with torch.no_grad():
        logits = ex.model(**ex.tokenizer(["great movie"], return_tensors="pt")).logits
    assert items[0].loss == pytest.approx(float(torch.log_softmax(logits, -1)[0, 1]), abs=1e-5)
    predicted = ex.explain(["great movie"])[0]
    assert predicted.target == ex.labels[int(logits.argmax())]
    with pytest.raises(InputError, match=r"unknown target 'meh'.*negative, positive"):
        ex.explain(["x"], targets=["meh"])
    with pytest.raises(InputError, match="sequence classifier"):
        ex.explain(["x"], ["y"])


def test_a_module_factory_supplies_model_and_tokenizer(classifier_dir, tmp_path, monkeypatch):
    (tmp_path / "my_factory_mod.py").write_text(
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"P = {str(classifier_dir)!r}\n"
        "def make():\n"
        "    return AutoModelForSequenceClassification.from_pretrained(P).eval(), "
        "AutoTokenizer.from_pretrained(P)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ex = Explainer.from_spec("module:my_factory_mod:make")
    items = ex.explain(["great movie"], targets=[1], method="hotflip", hotflip_k=1)
    assert items[0].target == "positive" and len(items[0].hotflip) == 1
    sys.modules.pop("my_factory_mod", None)


def test_hotflip_search_reports_its_steps_in_order_with_measured_changes(explainer):
    items = explainer.explain(A[:1], B[:1], method="hotflip_search", goal=0.3, budget=2)
    for item in items:
        steps = [h["step"] for h in item.hotflip]
        assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 2
        assert all(h["direction"] == "decrease" and h["verified"] < 0 for h in item.hotflip)
