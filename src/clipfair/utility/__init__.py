"""Utilities every layer may use: atomic output files and CSV cells, YAML 1.2 reading,
the registry of built-in YAML files.

Layer: utility.
"""
