"""Evaluation methods the analyses are built from: zero-shot scoring, linear probes, retrieval
bias, the model card, the precision audit, prompt sensitivity, association tests, run comparison.

Layer: methods.
"""
