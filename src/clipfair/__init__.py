"""clipfair: measure bias and fairness of CLIP-style models on datasets of people (and of places).

The folders are the layers. From the bottom up, a module imports only from its own layer or the
layers below it, at module level and inside functions alike (``tests/test_layers.py`` checks
this, that each module's docstring names the layer of its folder, and that there is no import
cycle):

- ``utility/``: ``registry``, ``yamlio``, ``outputs`` (import no other clipfair module);
- ``data/``: datasets and their layouts, attribute declarations, ``taxonomy``, ``synthetic``;
- ``models/``: the backends (the only code that imports transformers / open_clip), the offline
  toy-model builder, ``preprocess``;
- ``stats/``: ``inference`` (intervals, tests, adjustment), ``specs`` (the metric registry),
  ``metrics`` (per-group metrics, disparities), ``sanity``, ``weat``, ``runfolder`` (the one
  reader of a finished run's ``run.json`` and ``metrics.csv``);
- ``report/``: ``document`` (the report model, rendered to Markdown and HTML), ``figures``,
  ``render`` (a run's summary pages), ``confusion``;
- ``methods/``: the evaluation methods the analyses are built from: ``zeroshot``,
  ``linear_probe``, ``retrieval``, ``sensitivity``, ``compare``, ``precision``, ``model_card``,
  ``association_tests``;
- ``analyses/``: the plug-in contract (``base``, ``registry``, ``engine``, ``compose``) and one
  module per analysis;
- ``run/``: ``pipeline``, ``embed``, ``cache``, ``distributed``, ``record``, ``schema``,
  ``collect``, ``association_run``, ``toy``;
- the command line: ``cli``, ``__main__`` (the only Hydra code), at the top.
"""

__version__ = "0.1.0"
