"""Conversion of official PyTorch SAM checkpoints."""

from keras_sam.convert.weights import load_official_weights

__all__ = ["load_official_weights"]
