"""``run``: one whole-data-set run with the configured engine (local or Ray)."""

from __future__ import annotations

from .config import ExplainerFactory, RunConfig, RunSummary, default_factory


def run(
    config: RunConfig,
    *,
    explainer_factory: ExplainerFactory | None = None,
    progress: bool | None = None,
    command: str | None = None,
) -> RunSummary:
    """Run ``config`` with its engine; see :class:`RunConfig`.

    ``explainer_factory(model, framework)`` replaces ``Explainer.from_spec`` (it must be
    picklable for the Ray engine). ``progress``: show a bar (None: when stderr is a TTY).
    ``command``: the command line, recorded in the manifest. Raises ``InputError`` before any
    work for a missing column, an unloadable model or an ``out`` holding a different run.
    """
    factory = explainer_factory or default_factory
    if config.engine == "ray":
        from .ray_engine import run_ray

        return run_ray(config, factory, progress=progress, command=command)
    from .local import run_local

    return run_local(config, factory, progress=progress, command=command)
