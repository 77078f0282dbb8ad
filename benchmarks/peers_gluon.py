"""MXNet Gluon methods: embgrad and its peers, each as ``setup(workload) -> run()``.

Every run ends with ``nd.waitall()`` (MXNet's engine is asynchronous: without it a timer
measures only the time to queue the work). All runs are in eval mode
(``autograd.record(train_mode=False)``).

- ``train``: one forward and ``L.backward()`` over every parameter (the training step).
- ``floor``: the word lookup's output computed outside ``record()`` as a leaf with
  ``attach_grad()``, the rest of the model recorded, ``autograd.grad(L, [leaf])``: the bare
  gradient w.r.t. the lookup output, written by hand for this model.
- ``forum_loop``: the forum's per-sample loop: one forward, then B backwards with
  ``retain_graph=True``, each copying ``embedding.weight.grad()`` (dense (V, D) per sample).
- ``embgrad`` / ``embgrad_probe`` / ``embgrad_table`` / ``embgrad_norms`` / ``ig_embgrad``: as
  for PyTorch (``peers_torch``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from mxnet import autograd, nd

from _harness import Unsupported
from workloads_gluon import WORKLOADS, GluonWorkload

Runner = Callable[[], Any]
Check = Literal["auto", "probe", "exact", "off"]
IG_STEPS = 32
IG_INTERNAL_BATCH = 64


def build(workload: str, params: dict[str, Any], seed: int) -> GluonWorkload:
    """Build a workload from ``WORKLOADS`` by name."""
    return WORKLOADS[workload](params, seed)


def _synced(fn: Callable[[], Any]) -> Runner:
    def run() -> Any:
        out = fn()
        nd.waitall()
        return out

    return run


def train(wl: GluonWorkload) -> Runner:
    def run() -> Any:
        with autograd.record(train_mode=False):
            losses = wl.loss_fn(wl.net(*wl.inputs))
        losses.backward(train_mode=False)
        return wl.embedding.weight.grad()

    return _synced(run)


def floor(wl: GluonWorkload) -> Runner:
    def run() -> Any:
        x = wl.embedding(wl.inputs[0])
        x.attach_grad()
        with autograd.record(train_mode=False):
            losses = wl.loss_fn(wl.from_lookup(x))
        return autograd.grad(losses, [x], train_mode=False)[0]

    return _synced(run)


def forum_loop(wl: GluonWorkload) -> Runner:
    b = wl.batch
    eye = [nd.one_hot(nd.array([i]), b).reshape((b,)) for i in range(b)]

    def run() -> Any:
        with autograd.record(train_mode=False):
            losses = wl.loss_fn(wl.net(*wl.inputs))
        grads = []
        for i in range(b):
            losses.backward(out_grad=eye[i], retain_graph=i < b - 1, train_mode=False)
            grads.append(wl.embedding.weight.grad().copy())
        return grads

    return _synced(run)


# -- embgrad --------------------------------------------------------------------------------------
def _word_layer(wl: GluonWorkload) -> str:
    """The name embgrad gives the word lookup: the one with role "word", else the first."""
    import embgrad

    res = embgrad.gradients(wl.net, wl.inputs, wl.loss_fn, check="off")
    words = [name for name in res.layers if res[name].role == "word"]
    return (words or res.layers)[0]


def _embgrad_lookup(wl: GluonWorkload, check: Check) -> Callable[[], Any]:
    import embgrad

    name = _word_layer(wl)

    def call() -> Any:
        return embgrad.gradients(wl.net, wl.inputs, wl.loss_fn, layers=name, check=check)[name]

    return call


def embgrad_out(wl: GluonWorkload) -> Runner:
    call = _embgrad_lookup(wl, "auto")
    return _synced(lambda: call().output_grad)


def embgrad_probe(wl: GluonWorkload) -> Runner:
    call = _embgrad_lookup(wl, "probe")
    return _synced(lambda: call().output_grad)


def embgrad_table(wl: GluonWorkload) -> Runner:
    call = _embgrad_lookup(wl, "auto")
    return _synced(lambda: call().table_grad().values)


def embgrad_norms(wl: GluonWorkload) -> Runner:
    call = _embgrad_lookup(wl, "auto")
    return _synced(lambda: call().table_grad().norms())


def ig_embgrad(wl: GluonWorkload) -> Runner:
    import embgrad

    attribute = getattr(embgrad, "attribute", None)
    if attribute is None:
        raise Unsupported("embgrad.attribute does not exist in this checkout")
    labels = wl.labels.asnumpy()

    def loss_rows(logits: Any, rows: Any) -> Any:
        return wl._loss(logits, nd.array(labels[rows], dtype="float32"))

    def run() -> Any:
        return attribute(
            wl.net,
            wl.inputs,
            loss_rows,
            method="integrated_gradients",
            n_steps=IG_STEPS,
            internal_batch_size=IG_INTERNAL_BATCH,
        )

    return _synced(run)


METHODS: dict[str, Callable[[GluonWorkload], Runner]] = {
    "train": train,
    "floor": floor,
    "forum_loop": forum_loop,
    "embgrad": embgrad_out,
    "embgrad_probe": embgrad_probe,
    "embgrad_table": embgrad_table,
    "embgrad_norms": embgrad_norms,
    "ig_embgrad": ig_embgrad,
}
