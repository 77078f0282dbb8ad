"""The core's scenarios on every backend: a :class:`FakeModel` mirrored in each real framework.

A *kit* turns a :class:`FakeModel` into a model of its framework with the same tables (the
numpy weights copied) and the same forward (lookups, ``TB`` transpose, broadcast position ids,
batch-mean centring, a float input, a batch folded into the lookup's leading axis), and numpy
ids, floats and the scenarios' losses into its framework's arrays and ops. The expected values
come from the fake's own slow oracle (numpy, one sample at a time), which knows nothing of the
framework or of embgrad; what the kit's framework returns is compared with it. So a scenario
written once over a kit runs over the fake and over every real backend, and a new backend joins
the core's suite by adding a kit here (``KITS``).

Dropout is not mirrored (each framework draws its own masks), nor are output lookups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fakes.numpy_backend import FakeModel

#: the weights of the scenarios' losses: L_i = Σ_t w · tanh(h_it) or ½ Σ ||h_it||² + Σ h_it
TANH_W = np.array([0.7, -1.3, 0.4, 2.0, -0.5])


class FakeKit:
    """The fake itself: its arrays are numpy, its model is the FakeModel."""

    name = "fake"

    def model(self, fake: FakeModel) -> Any:
        return fake

    def ids(self, ids: np.ndarray) -> Any:
        return ids

    def floats(self, x: np.ndarray) -> Any:
        return x

    def loss(self, kind: str) -> Callable[[Any], Any]:
        if kind == "tanh":
            return lambda h: (h.tanh() * TANH_W[: h.shape[-1]]).sum(axis=(1, 2))
        if kind == "quad":
            return lambda h: (h * h * 0.5 + h).sum(axis=(1, 2))
        if kind == "scalar":
            return lambda h: h.sum()
        raise ValueError(kind)

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)


class TorchKit(FakeKit):
    name = "torch"

    def __init__(self) -> None:
        self.torch = pytest.importorskip("torch")

    def model(self, fake: FakeModel) -> Any:
        torch = self.torch
        nn = torch.nn

        class Embeddings(nn.Module):  # type: ignore[name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.word_embeddings = nn.Embedding.from_pretrained(
                    torch.tensor(fake.word.weight), freeze=False
                )
                if fake.position is not None:
                    self.position_embeddings = nn.Embedding.from_pretrained(
                        torch.tensor(fake.position.weight), freeze=False
                    )

        class Mirror(nn.Module):  # type: ignore[name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.embeddings = Embeddings()

            def forward(self, ids: Any, x: Any = None) -> Any:
                word = self.embeddings.word_embeddings
                h = word(ids.reshape(-1)).reshape(*ids.shape, -1) if fake.fold else word(ids)
                if fake.detach == "word":
                    h = h.detach()
                if fake.layout == "TB":
                    h = h.transpose(0, 1)
                length = h.shape[1]
                if fake.position is not None:
                    pos = torch.arange(length)
                    if fake.position_kind == "2d":
                        pos = pos[None]
                    p = self.embeddings.position_embeddings(pos)
                    h = h + (p.detach() if fake.detach == "position" else p)
                if fake.couple:
                    h = h - h.mean(0, keepdim=True)
                if x is not None:
                    h = h * x[:, None, :]
                return h

        return Mirror().eval()

    def ids(self, ids: np.ndarray) -> Any:
        return self.torch.tensor(ids, dtype=self.torch.int64)

    def floats(self, x: np.ndarray) -> Any:
        return self.torch.tensor(x)

    def loss(self, kind: str) -> Callable[[Any], Any]:
        torch = self.torch
        if kind == "tanh":
            return lambda h: (h.tanh() * torch.tensor(TANH_W[: h.shape[-1]], dtype=h.dtype)).sum(
                (1, 2)
            )
        if kind == "quad":
            return lambda h: (h * h * 0.5 + h).sum((1, 2))
        if kind == "scalar":
            return lambda h: h.sum()
        raise ValueError(kind)

    def numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class GluonKit(FakeKit):
    name = "gluon"

    def __init__(self) -> None:
        self.mx = pytest.importorskip("mxnet")

    def model(self, fake: FakeModel) -> Any:
        mx = self.mx
        nn = mx.gluon.nn

        def table(weight: np.ndarray, prefix: str) -> Any:
            emb = nn.Embedding(*weight.shape, dtype=weight.dtype, prefix=prefix)
            emb.initialize()
            emb.weight.set_data(mx.nd.array(weight, dtype=weight.dtype))
            return emb

        class Mirror(mx.gluon.Block):  # type: ignore[name-defined]
            def __init__(self) -> None:
                super().__init__(prefix="")
                with self.name_scope():
                    self.word_embeddings = table(fake.word.weight, "word_embeddings_")
                    if fake.position is not None:
                        self.position_embeddings = table(
                            fake.position.weight, "position_embeddings_"
                        )

            def forward(self, ids: Any, x: Any = None) -> Any:
                nd = mx.nd
                word = self.word_embeddings
                h = word(ids.reshape(-1)).reshape((*ids.shape, -1)) if fake.fold else word(ids)
                if fake.detach == "word":
                    h = nd.BlockGrad(h)
                if fake.layout == "TB":
                    h = nd.transpose(h, axes=(1, 0, 2))
                length = h.shape[1]
                if fake.position is not None:
                    pos = nd.arange(length, ctx=ids.context)
                    if fake.position_kind == "2d":
                        pos = pos.reshape((1, length))
                    p = self.position_embeddings(pos)
                    h = nd.broadcast_add(h, nd.BlockGrad(p) if fake.detach == "position" else p)
                if fake.couple:
                    h = nd.broadcast_sub(h, nd.mean(h, axis=0, keepdims=True))
                if x is not None:
                    h = nd.broadcast_mul(h, x.expand_dims(1))
                return h

        return Mirror()

    def ids(self, ids: np.ndarray) -> Any:
        return self.mx.nd.array(ids, dtype="float32")

    def floats(self, x: np.ndarray) -> Any:
        return self.mx.nd.array(x, dtype=x.dtype)

    def loss(self, kind: str) -> Callable[[Any], Any]:
        nd = self.mx.nd
        if kind == "tanh":
            return lambda h: nd.sum(
                nd.broadcast_mul(nd.tanh(h), nd.array(TANH_W[: h.shape[-1]], dtype=h.dtype)),
                axis=(1, 2),
            )
        if kind == "quad":
            return lambda h: nd.sum(h * h * 0.5 + h, axis=(1, 2))
        if kind == "scalar":
            return lambda h: nd.sum(h)
        raise ValueError(kind)

    def numpy(self, x: Any) -> np.ndarray:
        return x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)


#: every backend the core's scenarios run over (gluon needs mxnet: not in the numpy-2 venv)
KITS = [
    pytest.param(FakeKit, id="fake"),
    pytest.param(TorchKit, id="torch"),
    pytest.param(GluonKit, id="gluon", marks=pytest.mark.gluon),
]
