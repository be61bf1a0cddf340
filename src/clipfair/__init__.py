"""clipfair: measure bias and fairness of CLIP-style models on face datasets.

Every module's docstring names its layer (a line ``Layer: <name>``). From the bottom up; a
module imports only from its own layer or the layers below it, at module level and inside
functions alike (``tests/test_layers.py`` checks this, and that there is no import cycle):

- utility: ``registry``, ``yamlio``, ``outputs`` (import no other clipfair module);
- data: ``data/`` (datasets, attribute declarations), ``taxonomy``, ``synthetic``;
- models: ``models/`` (the backends, the only code that imports transformers / open_clip;
  the offline toy-model builder), ``preprocess``;
- stats: ``stats``, ``metrics`` (per-group metrics, intervals, disparities), ``runfolder``
  (the one reader of a finished run's ``run.json`` and ``metrics.csv``);
- report: ``document``, ``figures``, ``report``, ``confusion`` (the report model, plots and
  the run's summary pages);
- analyses: ``zeroshot``, ``linear_probe``, ``retrieval``, ``sensitivity``, ``compare``,
  ``precision``, ``model_card``;
- run: ``pipeline``, ``embed``, ``cache``, ``distributed``, ``record``, ``schema``,
  ``collect``, ``toy``;
- cli: ``cli``, ``__main__`` (the only Hydra code).
"""

__version__ = "0.1.0"
