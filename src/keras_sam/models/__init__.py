"""Keras models of the Segment Anything Model.

Public names are imported on first access (see `keras_sam.lazy`): the
command line reads `keras_sam.models.presets` before Keras is imported.
"""

from keras_sam.lazy import exports

_EXPORTS = {
    "PRESETS": "keras_sam.models.presets",
    "SAM": "keras_sam.models.sam",
    "SAMImageEncoder": "keras_sam.models.image_encoder",
    "TinyViTImageEncoder": "keras_sam.models.tiny_vit",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = exports(__name__, _EXPORTS, globals())
