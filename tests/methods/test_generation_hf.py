"""attribute_generation on HF decoder-only LMs (GPT-2 tied, Llama RoPE), random-init, saved with
save_pretrained and loaded through ``hf:PATH``; every step against the one-step oracle."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import embgrad  # noqa: E402
from embgrad.errors import EmbgradError, InputError, NoLookupError  # noqa: E402
from embgrad.methods.integrated_gradients import quadrature  # noqa: E402
from embgrad.models.load import load  # noqa: E402
from oracle_generation import decoder_grads, decoder_ig, decoder_step  # noqa: E402

pytestmark = pytest.mark.hf

VOCAB = 30522  # the bundled MiniLM tokenizer's


def _tokenizer():
    from embgrad.models import minilm

    return tf.AutoTokenizer.from_pretrained(minilm.model_path())


def _save(model, path):
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return f"hf:{path}"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "gpt2":
        cfg = tf.GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=VOCAB,
            n_positions=40,
            bos_token_id=101,
            eos_token_id=102,
            pad_token_id=0,
        )
        model = tf.GPT2LMHeadModel(cfg)
    else:
        cfg = tf.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=40,
            bos_token_id=101, eos_token_id=102, pad_token_id=0,
        )  # fmt: skip
        model = tf.LlamaForCausalLM(cfg)
    spec = _save(model, tmp_path_factory.mktemp(request.param))
    loaded = load(spec)
    assert loaded.kind == "causal_lm"
    return loaded


def _batch(padding: str):
    """Three prompts of 5, 3 and 4 tokens, padded to 5 on the ``padding`` side; 4 targets."""
    rng = np.random.default_rng(1)
    lengths = [5, 3, 4]
    ids = np.zeros((3, 5), dtype=np.int64)
    mask = np.zeros((3, 5), dtype=np.int64)
    for b, n in enumerate(lengths):
        at = slice(0, n) if padding == "right" else slice(5 - n, 5)
        ids[b, at] = rng.integers(1000, VOCAB, n)
        mask[b, at] = 1
    targets = rng.integers(1000, VOCAB, (3, 4))
    inputs = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask)}
    return inputs, ids, mask, targets


def _close(got, want, scale=None):
    scale = max(float(np.abs(want).max()) if scale is None else scale, 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_every_step_matches_the_one_step_oracle(lm, padding):
    inputs, ids, mask, targets = _batch(padding)
    res = embgrad.attribute_generation(
        lm.model, inputs, targets, return_grads=True, tokenizer=lm.tokenizer
    )
    want = decoder_grads(lm.model, ids, mask, targets)
    assert res.scores.shape == (3, 4, 9) and res.grads.shape == (3, 4, 9, 32)
    _close(res.grads, want)
    _close(res.scores, np.sqrt((want.astype(np.float64) ** 2).sum(-1)))
    _close(res.signed, want.sum(-1), np.abs(want).max())
    for b in range(3):
        real = np.flatnonzero(mask[b])
        for k in range(4):
            *_, q = decoder_step(lm.model, ids[b, real], targets[b], k)
            assert res.quantity[b, k] == pytest.approx(q, rel=1e-5, abs=1e-6)
            assert res.step_scores["probability"][b, k] == pytest.approx(np.exp(q), rel=1e-4)
            assert np.all(res.scores[b, k, 5 + k :] == 0)  # at and after its own target
    assert np.all(res.step_scores["entropy"] > 0)
    assert len(res.tokens[0]) == 9 and len(res.target_tokens[1]) == 4
    item = res.items[1]  # 3 real prompt tokens, the targets but the last
    assert len(item.tokens) == 3 + 3 and np.array(item.scores).shape == (4, 6)
    assert '"kind": "decoder"' in res.to_json()


def test_contrast_explains_the_difference_of_log_probabilities(lm):
    inputs, ids, mask, targets = _batch("left")
    contrast = (targets + 7) % VOCAB
    res = embgrad.attribute_generation(
        lm.model, inputs, targets, contrast=contrast, return_grads=True
    )
    _close(res.grads, decoder_grads(lm.model, ids, mask, targets, contrast))


def test_steps_split_into_passes_give_the_same_result(lm):
    inputs, _, _, targets = _batch("right")
    whole = embgrad.attribute_generation(lm.model, inputs, targets, return_grads=True)
    parts = embgrad.attribute_generation(
        lm.model, inputs, targets, return_grads=True, tokens_per_pass=20
    )
    assert len(parts.info["passes"]) > 1 == len(whole.info["passes"])
    _close(parts.grads, whole.grads)


def test_padded_targets_leave_their_steps_empty(lm):
    inputs, ids, mask, targets = _batch("left")
    tmask = np.ones(targets.shape, dtype=bool)
    tmask[1, 2:] = False
    res = embgrad.attribute_generation(
        lm.model, inputs, targets, target_mask=tmask, return_grads=True
    )
    want = decoder_grads(lm.model, ids, mask, targets)
    want[1, 2:] = 0
    _close(res.grads, want)
    assert np.isnan(res.step_scores["probability"][1, 2:]).all()


def test_generate_explains_the_greedy_continuation(lm):
    inputs, ids, mask, _ = _batch("right")
    res = embgrad.attribute_generation(lm.model, inputs, generate=3, return_grads=True)
    for b in range(3):
        real = ids[b, np.flatnonzero(mask[b])]
        alone = lm.model.generate(
            torch.as_tensor(real)[None], max_new_tokens=3, do_sample=False, pad_token_id=0
        )[0, real.shape[0] :].numpy()
        np.testing.assert_array_equal(res.targets[b], alone)
    # greedy: each generated token is its step's most probable one
    p = res.step_scores["probability"]
    assert np.all(p > 0) and np.all(p <= 1)
    _close(res.grads, decoder_grads(lm.model, ids, mask, res.targets))


def test_grad_x_input_and_integrated_gradients_are_the_registered_methods(lm):
    inputs, ids, mask, targets = _batch("left")
    want = decoder_grads(lm.model, ids, mask, targets)
    emb = lm.model.get_input_embeddings().weight.detach().numpy()
    gxi = embgrad.attribute_generation(lm.model, inputs, targets, method="grad_x_input")
    x = np.zeros(want.shape, dtype=np.float64)
    p_len = ids.shape[1]
    for b in range(3):
        x[b, :, :p_len] = emb[ids[b]] * mask[b][:, None]
        x[b, :, p_len:] = emb[targets[b]]
    _close(gxi.scores, (want * x).sum(-1) * (want != 0).any(-1))
    alphas, weights = quadrature(4, "gausslegendre")
    ig = embgrad.attribute_generation(
        lm.model, inputs, targets, method="integrated_gradients", n_steps=4
    )
    _close(ig.scores, decoder_ig(lm.model, ids, mask, targets, alphas, weights))
    assert ig.delta.shape == (3, 4) and np.all(np.isfinite(ig.delta))


def test_smoothgrad_without_noise_is_the_gradient(lm):
    inputs, _, _, targets = _batch("left")
    grad = embgrad.attribute_generation(lm.model, inputs, targets)
    sg = embgrad.attribute_generation(
        lm.model, inputs, targets, method="smoothgrad", sigma=0.0, n_samples=2
    )
    _close(sg.scores, grad.scores)


def test_a_logprobs_fn_on_teacher_forced_inputs_matches_the_hf_path(lm):
    inputs, ids, _, targets = _batch("right")
    full = {  # all prompts are 5 long: the first sample alone, teacher-forced
        "input_ids": torch.as_tensor(np.concatenate([ids[:1], targets[:1, :-1]], 1)),
    }

    def logprobs(out):
        return torch.log_softmax(out.logits[:, 4:], -1)

    res = embgrad.attribute_generation(
        lm.model, full, targets[:1], logprobs_fn=logprobs, return_grads=True
    )
    hf = embgrad.attribute_generation(lm.model, inputs, targets, return_grads=True)
    _close(res.grads[0, :, :8], hf.grads[0, :, :8])


def test_state_is_restored_and_bad_inputs_raise_before_work(lm):
    model = lm.model
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    inputs, _, _, targets = _batch("left")
    try:
        with pytest.raises(InputError, match="position limit of 40"):
            embgrad.attribute_generation(model, inputs, np.ones((3, 40), dtype=np.int64))
        with pytest.raises(InputError, match=r"targets has shape \(2, 4\)"):
            embgrad.attribute_generation(model, inputs, targets[:2])
        with pytest.raises(InputError, match="does not attribute generation"):
            embgrad.attribute_generation(model, inputs, targets, method="hotflip")
        with pytest.raises(InputError, match="logprobs_fn returned shape"):
            embgrad.attribute_generation(
                model, inputs["input_ids"], targets, logprobs_fn=lambda o: o.logits
            )
        with pytest.raises(InputError, match="must return log-probabilities"):
            embgrad.attribute_generation(
                model, inputs["input_ids"], targets, logprobs_fn=lambda o: o.logits[:, 1:]
            )
        embgrad.attribute_generation(model, inputs, targets)
        assert model.training
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_a_model_without_a_word_lookup_is_refused():
    class NoLookup(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 5)

        def forward(self, x):
            return self.lin(x)

    x = torch.randn(2, 4, 3)
    with pytest.raises(NoLookupError):
        embgrad.attribute_generation(
            NoLookup(), x, np.zeros((2, 4), dtype=np.int64),
            logprobs_fn=lambda o: torch.log_softmax(o, -1),
        )  # fmt: skip
    with pytest.raises(EmbgradError, match="not a HuggingFace LM"):
        embgrad.attribute_generation(NoLookup(), x, np.zeros((2, 4), dtype=np.int64))


def test_grad_x_input_equals_captums_llm_gradient_attribution(lm):
    captum = pytest.importorskip("captum.attr")
    text = "the cat sat on the mat"
    inputs = {
        k: v for k, v in lm.tokenizer(text, return_tensors="pt").items() if k != "token_type_ids"
    }
    targets = np.array([[2003, 1037, 3899]])
    res = embgrad.attribute_generation(lm.model, inputs, targets, method="grad_x_input")
    llm = captum.LLMGradientAttribution(
        captum.LayerGradientXActivation(lm.model, lm.model.get_input_embeddings()), lm.tokenizer
    )
    got = llm.attribute(
        captum.TextTokenInput(text, lm.tokenizer), target=torch.as_tensor(targets[0])
    )
    want = got.token_attr.detach().numpy()  # (K, P): per step, over the prompt
    p_len = inputs["input_ids"].shape[1]
    assert want.shape == (3, p_len)
    _close(res.scores[0, :, :p_len], want, np.abs(want).max())
