"""Renderers for token attributions: ``terminal`` (rich), ``html`` (one self-contained file) and
``png`` (matplotlib, Agg). rich and matplotlib are imported lazily; a missing one raises
:class:`embgrad.MissingExtraError` with the install command. All three share one colour scale
(``scale``): each text's scores divided by its largest |score|, blue (−) – white – red (+)."""
