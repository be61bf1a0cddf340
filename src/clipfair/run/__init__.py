"""Running: the typed config schema, embedding and its cache, the pipeline that composes the
configured analyses, distributed shards, run records, collect, the toy demo world.

Layer: run.
"""
