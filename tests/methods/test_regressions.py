"""Regressions found in review: the probe verdict of row-taking losses, HotFlip candidates when
few replacements are allowed, HotFlip verification in train mode."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import embgrad  # noqa: E402
from embgrad.errors import CouplingError, InputError  # noqa: E402
from embgrad.methods import get_method  # noqa: E402
from embgrad.methods._passes import base_pass  # noqa: E402
from models_torch import TinyText  # noqa: E402


def _ids(b: int = 4, t: int = 5, vocab: int = 40) -> torch.Tensor:
    return torch.randint(1, vocab, (b, t), generator=torch.Generator().manual_seed(0))


def test_row_taking_losses_do_not_share_a_probe_verdict():
    """Every ``loss_fn(outputs, rows)`` is wrapped by the methods; the remembered verdict must
    still be keyed on the user's function, so a coupled loss after an independent one is caught
    (it was not: both wrappers had one code object)."""
    model = TinyText().eval()
    ids = _ids()

    def independent(out, rows):
        return out[:, 0]

    def coupled(out, rows):
        return out[:, 0] - out[:, 0].mean()

    base_pass(model, ids, independent)
    with pytest.raises(CouplingError):
        base_pass(model, ids, coupled)


@pytest.mark.parametrize("direction", ["increase", "decrease", "abs"])
def test_hotflip_never_proposes_excluded_ids_or_the_token_itself(direction):
    """With fewer allowed replacements than k, only allowed ones come back (before: excluded ids,
    no-op flips and -inf estimates)."""
    vocab = 6
    model = TinyText(vocab=vocab, pad=None).eval()
    ids = _ids(2, 4, vocab)
    excluded = [0, 4, 5]
    att = embgrad.attribute(
        model, ids, lambda out: out[:, 0], method="hotflip", k=3, direction=direction,
        exclude_ids=excluded, verify=0,
    )  # fmt: skip
    flips = [f for per in att.raw.hotflip for f in per]
    assert flips
    for f in flips:
        assert f["replacement_id"] not in excluded
        assert f["replacement_id"] != f["token_id"]
        assert np.isfinite(f["estimate"])
    att.to_json()  # finite estimates: valid JSON


def test_hotflip_refuses_verification_in_train_mode():
    """Two forwards in train mode draw different dropout masks: f(x') - f(x) would be noise."""
    model = TinyText(dropout=0.5)
    with pytest.raises(InputError, match="train"):
        get_method("hotflip")(model, mode="train").attribute(_ids(), lambda out: out[:, 0])
    res = get_method("hotflip")(model, mode="train").attribute(
        _ids(), lambda out: out[:, 0], verify=0
    )
    assert res.hotflip is not None


def test_zero_shot_targets_take_arrays_of_any_kind():
    from embgrad.tasks.zeroshot import label_targets

    labels = ["positive", "negative"]
    for t in (np.array(1), torch.tensor(1), np.int64(1), 1, "negative", [1, 1]):
        assert label_targets(t, 2, labels).tolist() == [1, 1]
    assert label_targets(torch.tensor([0, 1]), 2, labels).tolist() == [0, 1]


def test_generation_prompts_pad_without_a_pad_token_and_leave_the_tokenizer_alone():
    """GPT-2-style tokenizers have no pad token: the prompts are padded by hand (the mask leaves
    the padding out), and the user's tokenizer keeps its padding side."""
    transformers = pytest.importorskip("transformers")
    from embgrad.models import minilm
    from embgrad.outputs.generation import encode_texts

    tok = transformers.AutoTokenizer.from_pretrained(minilm.model_path())
    tok.pad_token = None
    tok.padding_side = "left"
    model = torch.nn.Embedding(4, 2)
    inputs, _targets, tmask = encode_texts(model, tok, ["a b c d", "a"], ["x y", "z"])
    assert tok.padding_side == "left" and tok.pad_token is None
    ids, att = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    want = [tok("a b c d")["input_ids"], tok("a")["input_ids"]]
    for b, row in enumerate(want):
        assert ids[b, : len(row)].tolist() == row
        assert att[b].tolist() == [1] * len(row) + [0] * (ids.shape[1] - len(row))
    assert tmask.tolist() == [[True, True], [True, False]]
