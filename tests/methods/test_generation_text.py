"""Generation output a newcomer can read (issue 23, item 5; issue 22, items 7 and 20): tokens
as text (the tokenizer's own decoding) in every view, headings the prompt as given, an early
end-of-sequence said as such, a one-line repr, a PNG with its colour bar and step scores,
writers that refuse to overwrite, and a sandboxed notebook view. A GPT-2-style byte-level BPE
tokenizer is trained here, offline, on a few sentences (no download)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import embgrad  # noqa: E402
from embgrad.cli import main  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from embgrad.methods.gen_result import token_texts  # noqa: E402

pytestmark = pytest.mark.hf

CORPUS = [
    "The cat sat on the mat.",
    "The dog ran away fast, and the cat watched it go.",
    "Once upon a time there was a cat who liked the sun.",
    "It costs $5 to see the time.",
] * 20
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer (GPT-2's scheme: ``Ġ`` marks a leading space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)


def _gpt2(path, bpe, *, eos_always: bool):
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=len(bpe), n_positions=64,
        bos_token_id=bpe.eos_token_id, eos_token_id=bpe.eos_token_id,
        tie_word_embeddings=not eos_always,
    )  # fmt: skip
    model = tf.GPT2LMHeadModel(cfg).eval()
    if eos_always:  # every position predicts the end-of-sequence token
        with torch.no_grad():
            model.transformer.ln_f.weight.fill_(0.1)
            model.transformer.ln_f.bias.fill_(1.0)
            model.lm_head.weight.zero_()
            model.lm_head.weight[bpe.eos_token_id] = 1.0
    model.save_pretrained(path)
    bpe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, bpe):
    return _gpt2(tmp_path_factory.mktemp("gpt2bpe"), bpe, eos_always=False)


@pytest.fixture(scope="module")
def gpt2_eos(tmp_path_factory, bpe):
    return _gpt2(tmp_path_factory.mktemp("gpt2eos"), bpe, eos_always=True)


def test_token_texts_are_the_tokenizers_decoding_in_context(bpe):
    ids = bpe("The cat sat on the mat.")["input_ids"]
    raw = bpe.convert_ids_to_tokens(ids)
    assert any(t.startswith("Ġ") for t in raw)  # the symbols a newcomer must not see
    pieces = token_texts(bpe, ids)
    assert "".join(pieces) == "The cat sat on the mat."
    assert " cat" in pieces and not any("Ġ" in p for p in pieces)
    from embgrad.models import minilm

    wp = tf.AutoTokenizer.from_pretrained(minilm.model_path())  # WordPiece: ##pieces join
    wids = wp("unbelievably good", add_special_tokens=False)["input_ids"]
    assert any(t.startswith("##") for t in wp.convert_ids_to_tokens(wids))
    assert "".join(token_texts(wp, wids)) == "unbelievably good"


def test_cli_continuation_shows_text_tokens_and_the_prompt_everywhere(gpt2, tmp_path, capsys):
    out = tmp_path / "out"
    prompt = "The  cat"  # two spaces: the heading is the prompt as given, not re-joined tokens
    code = main([
        "explain", "--model", f"hf:{gpt2}", "--text", prompt, "--continuation", " sat on the mat",
        "--format", "terminal,json,html,png", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "attributions.json").read_text())
    (item,) = doc["items"]
    assert item["text"] == prompt
    assert "".join(item["generated"]) == " sat on the mat"
    assert item["generated"][0] == " sat" and item["requested"] == len(item["generated"])
    assert "".join(item["tokens"]).startswith("The  cat sat")
    page = (out / "report.html").read_text()
    for shown in (printed, page, json.dumps(doc, ensure_ascii=False)):
        assert "Ġ" not in shown
    assert f"[1] {prompt}" in page and f"[1] {prompt}" in printed
    assert "␣sat" in page and "'␣mat' (probability" in printed  # a leading space, visible
    assert "4 generated tokens" in printed and "asked" not in printed


def test_cli_generation_records_the_integrated_gradients_baseline(gpt2, tmp_path):
    out = tmp_path / "out"
    code = main([
        "explain", "--model", f"hf:{gpt2}", "--text", "The cat", "--continuation", " sat",
        "--method", "integrated_gradients", "-O", "n_steps=4", "--format", "json,html",
        "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    doc = json.loads((out / "attributions.json").read_text())
    assert doc["options"] == {"baseline": "zeros", "n_steps": 4, "rule": "gausslegendre"}
    assert "baseline=zeros, n_steps=4" in (out / "report.html").read_text()


def test_generation_stopped_by_eos_says_so(gpt2_eos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([
        "explain", "--model", f"hf:{gpt2_eos}", "--text", "The cat", "--generate", "8",
        "--format", "terminal,json,html", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    (item,) = json.loads((out / "attributions.json").read_text())["items"]
    assert item["generated"] == [EOS] and item["requested"] == 8 and item["stopped_at_eos"]
    said = "1 generated token (the end-of-sequence token ended it; 8 asked)"
    assert said in printed and said in (out / "report.html").read_text()


@pytest.fixture(scope="module")
def result(gpt2, bpe):
    model = tf.AutoModelForCausalLM.from_pretrained(gpt2).eval()
    enc = dict(bpe(["The cat"], return_tensors="pt"))
    return embgrad.attribute_generation(model, enc, generate=3, tokenizer=bpe)


def test_repr_and_str_are_one_line(result):
    text = repr(result)
    assert "\n" not in text and len(text) < 200 and str(result) == text
    assert text.startswith("<GenerationAttribution method='gradient' kind='decoder': 1 generation")
    assert "'The cat'" in text


def test_writers_refuse_to_overwrite_unless_asked(result, tmp_path):
    for name, write in (
        ("a.json", result.to_json), ("a.html", result.to_html), ("a.png", result.plot),
    ):  # fmt: skip
        path = tmp_path / name
        path.write_text("mine")
        with pytest.raises(InputError, match="exists; pass overwrite=True"):
            write(path)
        assert path.read_text() == "mine"
        write(path, overwrite=True)
        assert path.stat().st_size > 100


def test_notebook_view_is_a_sandboxed_iframe_with_a_short_heading(result):
    html = result._repr_html_()
    assert html.startswith("<iframe srcdoc=") and " sandbox" in html
    assert "<style>" not in html  # the page's CSS is inside srcdoc, escaped
    result.prompts = ["word " * 200]
    html = result._repr_html_()
    assert "word " * 60 not in html and "…" in html
    result.prompts = None


def test_png_has_the_colour_bar_and_the_step_scores(result, tmp_path):
    pytest.importorskip("matplotlib")
    fig = result.plot().figure
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum(t.startswith("p ") and "  H " in t for t in texts) == 3, texts  # one per step
    assert any("H: entropy (nats)" in t for t in texts)
    assert any("score / max |score|" in ax.get_xlabel() for ax in fig.axes)  # the colour bar
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_a_dollar_in_a_prompt_is_drawn_literally(gpt2, bpe, tmp_path):
    pytest.importorskip("matplotlib")
    model = tf.AutoModelForCausalLM.from_pretrained(gpt2).eval()
    enc = dict(bpe(["It costs $5 and $6"], return_tensors="pt"))
    res = embgrad.attribute_generation(model, enc, generate=2, tokenizer=bpe)
    res.plot(tmp_path / "d.png")
    assert np.frombuffer((tmp_path / "d.png").read_bytes()[:4], np.uint8).size == 4
