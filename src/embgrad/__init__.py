"""embgrad: exact per-sample gradients w.r.t. word embeddings, in one backward.

Public API::

    res = embgrad.gradients(model, inputs, loss_fn)   # Gluon Block or torch Module
    res.layers                                        # captured lookups, by name
    res[name].output_grad                             # (B, T, D) dL_i/d emb_i
    res[name].table_grad()                            # sparse per-sample table rows

    att = embgrad.attribute(model, inputs, target=1, method="integrated_gradients")
    gen = embgrad.attribute_generation(lm, prompts, targets)  # (B, K, L) per generated token
    idx = embgrad.InfluenceIndex.build(model, train, labels=y)  # TracIn-WE data influence
    idx.query(test, labels=y_test).scores             # (n_test, n_train) float64
    embgrad.list_methods()                            # the registered attribution methods
"""

from . import backends as _backends  # noqa: F401  (installs the frameworks' table in the core)
from ._version import __version__
from .core.capture import gradients
from .core.results import Gradients, LookupGrad
from .core.sparse import SparseRows
from .errors import (
    BatchAxisError,
    CouplingError,
    DenseTooLargeError,
    EmbgradError,
    InputError,
    LossError,
    MissingExtraError,
    NoLookupError,
    UnsupportedModelError,
)
from .influence import Influence, InfluenceIndex
from .methods import (
    Attribution,
    GenerationAttribution,
    list_methods,
)
from .outputs import TokenClassAttribution, attribute, attribute_generation

__all__ = [
    "Attribution",
    "BatchAxisError",
    "CouplingError",
    "DenseTooLargeError",
    "EmbgradError",
    "GenerationAttribution",
    "Gradients",
    "Influence",
    "InfluenceIndex",
    "InputError",
    "LookupGrad",
    "LossError",
    "MissingExtraError",
    "NoLookupError",
    "SparseRows",
    "TokenClassAttribution",
    "UnsupportedModelError",
    "__version__",
    "attribute",
    "attribute_generation",
    "gradients",
    "list_methods",
]
