"""Datasets for fine-tuning and testing SAM."""

from keras_sam.training.datasets.shapes import ShapesDataset
from keras_sam.training.datasets.shapes import make_scene

__all__ = ["ShapesDataset", "make_scene"]
