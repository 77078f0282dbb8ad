"""Issue 23 item 6: texts given where token ids are expected. With a tokenizer embgrad
tokenizes for the user (the same numbers as the tokenizer's own output); without one the error
says to tokenize first and shows the line that does it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import embgrad  # noqa: E402
from embgrad.errors import InputError  # noqa: E402

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def tok():
    from embgrad.models import minilm

    return tf.AutoTokenizer.from_pretrained(minilm.model_path())


def _bert_cfg(**kw):
    return tf.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16, **kw)  # fmt: skip


def test_attribute_tokenizes_texts_for_a_classifier(tok):
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(_bert_cfg(num_labels=2)).eval()
    texts = ["a short one", "a somewhat longer text here"]
    got = embgrad.attribute(model, texts, target=1, tokenizer=tok, method="grad_x_input")
    want = embgrad.attribute(
        model, tok(texts, padding=True, return_tensors="pt"), target=1, tokenizer=tok,
        method="grad_x_input",
    )  # fmt: skip
    np.testing.assert_allclose(got.raw.scores, want.raw.scores, rtol=1e-6, atol=1e-8)
    with pytest.raises(InputError, match=r"tokenize first, e\.g\. inputs = tokenizer\(texts"):
        embgrad.attribute(model, ["a text"], target=1)


def test_attribute_generation_tokenizes_prompts(tok):
    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30522, n_positions=32,
                        bos_token_id=101, eos_token_id=102, pad_token_id=0)  # fmt: skip
    lm = tf.GPT2LMHeadModel(cfg).eval()
    targets = np.array([[2003, 1037], [2003, 1037]])
    texts = ["The cat", "A dog ran"]
    got = embgrad.attribute_generation(lm, texts, targets, tokenizer=tok)
    enc = tok(texts, padding=True, return_tensors="pt")
    want = embgrad.attribute_generation(
        lm, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, targets
    )
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-8)
    with pytest.raises(InputError, match="tokenize first"):
        embgrad.attribute_generation(lm, ["The cat"], targets[:1])
