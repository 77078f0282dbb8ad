"""The public surface: explicit names, an exception tree, no framework imported eagerly."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import embgrad
from embgrad import errors


def test_all_lists_exactly_the_public_names():
    # subpackages and modules become attributes once imported: they are not public names
    modules = {
        n
        for n in dir(embgrad)
        if isinstance(getattr(embgrad, n), types.ModuleType)
        and getattr(embgrad, n).__name__ == f"embgrad.{n}"
    }
    public = {n for n in dir(embgrad) if not n.startswith("_")} - modules
    assert set(embgrad.__all__) - {"__version__"} == public


def test_every_error_is_an_embgrad_error_and_the_builtin_callers_expect():
    expected = {
        errors.UnsupportedModelError: TypeError,
        errors.MissingExtraError: ImportError,
        errors.InputError: ValueError,
        errors.LossError: ValueError,
        errors.NoLookupError: LookupError,
        errors.BatchAxisError: ValueError,
        errors.CouplingError: RuntimeError,
        errors.DenseTooLargeError: MemoryError,
    }
    for cls, builtin in expected.items():
        assert issubclass(cls, errors.EmbgradError) and issubclass(cls, builtin)
        assert cls.__name__ in errors.__doc__


def test_missing_extra_names_the_install_command():
    err = errors.missing_extra("mxnet", "gluon")
    assert "pip install 'embgrad[gluon]'" in str(err)


def test_import_embgrad_imports_no_framework():
    code = (
        "import sys, embgrad; "
        "bad = [m for m in ('torch', 'mxnet', 'matplotlib', 'rich', 'ray', 'pyarrow', 'transformers')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unknown_model_type_names_the_supported_frameworks():
    with pytest.raises(errors.UnsupportedModelError, match=r"builtins\.object.*gluon.*torch"):
        embgrad.gradients(object(), [[1, 2]], lambda out: out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"check": "sometimes"},
            r"check='sometimes' is not one of 'auto', 'probe', 'exact', 'off'",
        ),
        ({"mode": "training"}, r"mode='training' is not one of 'eval', 'train'"),
    ],
)
def test_bad_options_are_refused_before_any_work(kwargs, message):
    with pytest.raises(errors.InputError, match=message):
        embgrad.gradients(object(), [[1]], lambda out: out, **kwargs)
