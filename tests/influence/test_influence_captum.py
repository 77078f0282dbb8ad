"""InfluenceIndex against Captum's TracInCP on the word-embedding layer of a small random-init
HF classifier (saved with save_pretrained, the bundled MiniLM tokenizer), two checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
captum_influence = pytest.importorskip("captum.influence")

from embgrad import InfluenceIndex  # noqa: E402
from oracle_influence import close  # noqa: E402
from oracle_methods import minilm  # noqa: E402

pytestmark = [pytest.mark.hf, pytest.mark.peers]

TRAIN = [
    "a great and moving film",
    "the plot was dull",
    "great acting, dull plot",
    "I loved the music",
    "the film was too long",
    "moving music and great acting overall",
    "dull",
]
TEST = ["great music", "a dull and long film indeed"]


def _classifier(seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    _, tok = minilm()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3, max_position_embeddings=64,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval(), tok


class Wrapped(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).logits


def test_scores_equal_captum_tracincp_on_the_word_embedding_with_two_checkpoints(tmp_path):
    model, tok = _classifier(0)
    other, _ = _classifier(1)
    path = tmp_path / "saved"
    model.save_pretrained(path)  # the architecture as users keep it
    lrs = [0.3, 1.7]
    files = []
    for i, m in enumerate([model, other]):
        f = tmp_path / f"ckpt{i}.pt"
        torch.save({"state": Wrapped(m).state_dict(), "lr": lrs[i]}, f)
        files.append(str(f))

    def load(net, f):
        saved = torch.load(f, weights_only=True)
        net.load_state_dict(saved["state"])
        return saved["lr"]

    enc = tok(TRAIN, padding=True, return_tensors="pt")
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    enc_test = tok(TEST, padding=True, return_tensors="pt")
    y_test = torch.tensor([2, 1])

    net, _ = _classifier(2)
    wrapped = Wrapped(net)
    dataset = torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], y)
    tracin = captum_influence.TracInCP(
        wrapped, dataset, files, checkpoints_load_func=load,
        layers=["model.bert.embeddings.word_embeddings"],
        loss_fn=torch.nn.CrossEntropyLoss(reduction="none"), batch_size=1,
    )  # fmt: skip
    expected = tracin.influence((enc_test["input_ids"], enc_test["attention_mask"], y_test))

    ckpts = [model.state_dict(), other]
    idx = InfluenceIndex.build(
        model, enc, labels=y, checkpoints=ckpts, weights=lrs, batch_size=3, tokenizer=tok
    )
    inf = idx.query(enc_test, labels=y_test)
    close(inf.scores, expected.double().numpy())
    # the breakdown names the bundled tokenizer's tokens, and [CLS] carries a share
    parts = inf.by_token(0, 0)
    assert "[CLS]" in parts and sum(parts.values()) == pytest.approx(inf.scores[0, 0])
    np.testing.assert_allclose(idx.self_influence(), idx.query(enc, labels=y).scores.diagonal())
