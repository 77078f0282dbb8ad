"""HotFlip proposes whole words where a whole word stands (issue 23, item 8): with a WordPiece
or BPE tokenizer, a token is replaced only by a token of its own kind (a word by a word, a
``##piece`` by a piece); ``replacements="pieces"`` proposes any token."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import embgrad  # noqa: E402
from embgrad.methods.hotflip import continuing_pieces  # noqa: E402

VOCAB = ["[PAD]", "the", "cat", "##ay", "dog", "##s", "sat", "mat"]


class WordPieceLike:
    """What HotFlip reads from a tokenizer: its vocabulary's token strings."""

    all_special_ids = (0,)

    def __len__(self) -> int:
        return len(VOCAB)

    def convert_ids_to_tokens(self, ids):
        return [VOCAB[int(i)] for i in ids]


class Model(torch.nn.Module):
    """f = w · Σ_t e(x_t): every position's gradient is w, so the estimate of swapping w for
    w' is (e_w' − e_w) · w; the piece "##ay" is the best swap by far, "dog" the best word."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(len(VOCAB), 3)
        self.w = torch.nn.Parameter(torch.tensor([1.0, 0.0, 0.0]))
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[3, 0] = 10.0  # ##ay
            self.embed.weight[5, 0] = 5.0  # ##s
            self.embed.weight[4, 0] = 2.0  # dog
            self.embed.weight[7, 0] = 1.0  # mat

    def forward(self, ids):
        return self.embed(ids).sum(1) @ self.w


IDS = torch.tensor([[1, 2, 5, 6], [2, 6, 7, 1]])  # "the cat ##s sat", "cat sat mat the"


def _flips(**opts):
    att = embgrad.attribute(
        Model(), IDS, lambda out: out, method="hotflip", tokenizer=WordPieceLike(), k=7,
        verify=0, **opts,
    )  # fmt: skip
    return [
        [(VOCAB[h["token_id"]], VOCAB[h["replacement_id"]]) for h in c] for c in att.raw.hotflip
    ]


def test_words_by_default_pieces_only_for_pieces():
    flips = [f for sample in _flips() for f in sample]
    for original, new in flips:
        assert original.startswith("##") == new.startswith("##"), (original, new)
    assert ("cat", "dog") in flips and ("##s", "##ay") in flips
    assert not any(new == "##ay" and not old.startswith("##") for old, new in flips)


def test_pieces_proposes_any_token():
    flips = [f for sample in _flips(replacements="pieces") for f in sample]
    assert ("cat", "##ay") in flips and ("the", "##ay") in flips


def test_the_best_of_a_position_is_its_best_word():
    att = embgrad.attribute(
        Model(), IDS, lambda out: out, method="hotflip", tokenizer=WordPieceLike(), k=1,
        verify=0,
    )  # fmt: skip
    # position 1 of sample 0 ("cat", e·w = 0): best word "dog" (+2), not "##ay" (+10)
    assert att.raw.scores[0, 1] == pytest.approx(2.0)
    assert att.raw.info["replacements"] == "words"


def test_kinds_are_read_from_the_tokenizers_marks():
    kinds = continuing_pieces(WordPieceLike())
    assert kinds is not None and kinds.tolist() == [v.startswith("##") for v in VOCAB]

    class ByteBPE(WordPieceLike):
        def convert_ids_to_tokens(self, ids):
            words = ["<eos>", "The", "Ġcat", "ay", "Ġdog", "s", "Ġsat", "Ġmat"]
            return [words[int(i)] for i in ids]

    assert continuing_pieces(ByteBPE()).tolist() == [
        True, True, False, True, False, True, False, False
    ]  # fmt: skip
    assert continuing_pieces(object()) is None  # no vocabulary: every token proposed


@pytest.mark.hf
def test_minilm_explainer_never_swaps_a_word_for_a_piece():
    pytest.importorskip("transformers")
    from embgrad.explain import Explainer

    ex = Explainer.from_spec()
    kinds = continuing_pieces(ex.tokenizer)
    assert kinds is not None and kinds.mean() > 0.05
    items = ex.explain(
        ["i loved this movie so much", "the film was a boring mess"],
        method="hotflip", hotflip_k=10, k=10, replacements="words",
    )  # fmt: skip
    flips = [(h["token"], h["replacement"]) for it in items for h in it.hotflip]
    assert flips and all(o.startswith("##") == n.startswith("##") for o, n in flips), flips
    ids = np.asarray(ex.tokenizer.convert_tokens_to_ids([n for _, n in flips]))
    assert not kinds[ids].any()
