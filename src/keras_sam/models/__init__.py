"""Keras models of the Segment Anything Model."""

from keras_sam.models.image_encoder import SAMImageEncoder
from keras_sam.models.presets import PRESETS
from keras_sam.models.sam import SAM

__all__ = ["PRESETS", "SAM", "SAMImageEncoder"]
