"""clipfair: measure bias and fairness of CLIP-style models on face datasets."""

__version__ = "0.1.0"
