"""``embgrad explain --continuation / --generate`` on random-init HF LMs saved to a folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from embgrad.cli import main  # noqa: E402

pytestmark = pytest.mark.hf


def _tokenizer():
    from embgrad.models import minilm

    return tf.AutoTokenizer.from_pretrained(minilm.model_path())


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=30522, n_positions=64,
        bos_token_id=101, eos_token_id=102, pad_token_id=0,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("gpt2")
    tf.GPT2LMHeadModel(cfg).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tf.T5Config(
        vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=102, decoder_start_token_id=101,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("t5")
    tf.T5ForConditionalGeneration(cfg).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


def test_continuation_writes_the_matrix_views(gpt2, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([
        "explain", "--model", f"hf:{gpt2}", "--text", "a cat sat", "--text", "the dog",
        "--continuation", "on the mat", "--continuation", "ran away fast",
        "--format", "terminal,json,html,png", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    doc = json.loads((out / "attributions.json").read_text())
    first, second = doc["items"]
    # tokens as text, each as the tokenizer decodes it after the ones before (issue 23)
    assert first["generated"] == [" on", " the", " mat"] and second["kind"] == "decoder"
    # [CLS] a cat sat [SEP] then the targets but the last
    assert first["tokens"][:5] == ["[CLS]", " a", " cat", " sat", " [SEP]"]
    assert first["text"] == "a cat sat"  # the prompt as given
    assert np.array(first["scores"]).shape == (3, 5 + 2)
    assert (out / "report.html").is_file() and (out / "heatmap.png").is_file()
    printed = capsys.readouterr().out
    assert "'␣mat' (probability" in printed


def test_generate_on_a_seq2seq_model(t5, tmp_path):
    out = tmp_path / "out"
    code = main([
        "explain", "--model", f"hf:{t5}", "--text", "a cat sat", "--generate", "3",
        "--format", "json", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    (item,) = json.loads((out / "attributions.json").read_text())["items"]
    assert item["kind"] == "seq2seq" and item["source_length"] == 5
    n = len(item["generated"])
    assert 1 <= n <= 3 and np.array(item["scores"]).shape == (n, 5 + n)


def test_bad_generation_requests(gpt2, tmp_path, capsys):
    base = ["explain", "--model", f"hf:{gpt2}", "--text", "a", "--out", str(tmp_path)]
    assert main([*base, "--continuation", "b", "--generate", "2"]) == 2
    assert main([*base, "--continuation", "b", "--continuation", "c"]) == 1
    assert "2 continuation(s) for 1 text(s)" in capsys.readouterr().err
    assert main([*base, "--continuation", "b", "--method", "hotflip"]) == 1
    assert "does not attribute generation" in capsys.readouterr().err


def test_an_encoder_is_refused_before_any_work(tmp_path, capsys):
    cfg = tf.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    tf.BertModel(cfg).save_pretrained(tmp_path / "bert")
    _tokenizer().save_pretrained(tmp_path / "bert")
    code = main([
        "explain", "--model", f"hf:{tmp_path / 'bert'}", "--text", "a", "--continuation", "b",
        "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code == 1 and "not a causal or seq2seq LM" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
