"""attribute_generation on HF encoder–decoders (BART, T5), random-init, saved and loaded through
``hf:PATH``; every step against the one-step oracle (source and decoder inputs)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import embgrad  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from embgrad.models.load import load  # noqa: E402
from embgrad.outputs.generation import position_limit  # noqa: E402
from oracle_generation import seq2seq_grads  # noqa: E402

pytestmark = pytest.mark.hf

VOCAB = 30522


@pytest.fixture(scope="module", params=["bart", "t5"])
def s2s(request, tmp_path_factory):
    from embgrad.models import minilm

    torch.manual_seed(0)
    ids = {"pad_token_id": 0, "eos_token_id": 102, "decoder_start_token_id": 101}
    if request.param == "bart":
        cfg = tf.BartConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=40, bos_token_id=101, **ids,
        )  # fmt: skip
        model = tf.BartForConditionalGeneration(cfg)
    else:
        cfg = tf.T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, **ids
        )
        model = tf.T5ForConditionalGeneration(cfg)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    tf.AutoTokenizer.from_pretrained(minilm.model_path()).save_pretrained(path)
    loaded = load(f"hf:{path}")
    assert loaded.kind == "seq2seq_lm"
    return loaded


def _batch(padding: str):
    rng = np.random.default_rng(2)
    ids = np.zeros((3, 5), dtype=np.int64)
    mask = np.zeros((3, 5), dtype=np.int64)
    for b, n in enumerate([5, 3, 4]):
        at = slice(0, n) if padding == "right" else slice(5 - n, 5)
        ids[b, at] = rng.integers(1000, VOCAB, n)
        mask[b, at] = 1
    targets = rng.integers(1000, VOCAB, (3, 4))
    return (
        {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask)},
        ids,
        mask,
        targets,
    )


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_source_and_decoder_gradients_match_the_one_step_oracle(s2s, padding):
    inputs, ids, mask, targets = _batch(padding)
    contrast = (targets + 3) % VOCAB
    for c in (None, contrast):
        res = embgrad.attribute_generation(
            s2s.model, inputs, targets, contrast=c, return_grads=True, tokenizer=s2s.tokenizer
        )
        src, dec = seq2seq_grads(s2s.model, ids, mask, targets, 101, c)
        assert res.scores.shape == (3, 4, 5) and res.target_scores.shape == (3, 4, 4)
        _close(res.grads, src)
        _close(res.target_grads, dec)
        _close(res.target_scores, np.sqrt((dec.astype(np.float64) ** 2).sum(-1)))
        assert np.all(np.triu(np.ones((4, 4)), 1)[None] * res.target_scores == 0)
        assert len(res.tokens[0]) == 5
        item = res.items[1]  # 3 source tokens, then the 4 decoder inputs (start, y_0 … y_2)
        assert item.source_length == 3 and len(item.tokens) == 7 and len(item.generated) == 4
        assert np.array(item.scores).shape == (4, 7)


def test_generate_and_split_passes(s2s):
    inputs, ids, mask, _ = _batch("right")
    res = embgrad.attribute_generation(s2s.model, inputs, generate=3, return_grads=True)
    split = embgrad.attribute_generation(
        s2s.model, inputs, res.targets, target_mask=res.target_mask, return_grads=True,
        tokens_per_pass=12,
    )  # fmt: skip
    assert len(split.info["passes"]) > 2
    _close(split.grads, res.grads)
    for b in range(3):
        real = ids[b, np.flatnonzero(mask[b])]
        alone = s2s.model.generate(torch.as_tensor(real)[None], max_new_tokens=3, do_sample=False)[
            0, 1:
        ].numpy()
        n = int(res.target_mask[b].sum())
        np.testing.assert_array_equal(res.targets[b, :n], alone[:n])
    src, dec = seq2seq_grads(s2s.model, ids, mask, res.targets, 101)
    src[~res.target_mask] = 0
    dec[~res.target_mask] = 0
    _close(res.grads, src)
    _close(res.target_grads, dec)


def test_integrated_gradients_reports_a_delta_per_step(s2s):
    inputs, _, _, targets = _batch("left")
    res = embgrad.attribute_generation(
        s2s.model, inputs, targets, method="integrated_gradients", n_steps=8
    )
    assert res.delta.shape == (3, 4) and np.all(np.isfinite(res.delta))


def test_targets_longer_than_the_position_limit_are_refused(s2s):
    inputs, _, _, _ = _batch("left")
    limit = position_limit(s2s.model.config)
    if limit is None:
        pytest.skip("this config states no position limit")
    with pytest.raises(InputError, match=f"position limit of {limit}"):
        embgrad.attribute_generation(s2s.model, inputs, np.ones((3, limit + 1), dtype=np.int64))
