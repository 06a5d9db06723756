"""keras-sam: Segment Anything (SAM) for Keras 3.

The public names below are imported lazily (PEP 562), so that importing
`keras_sam` (e.g. by the `keras-sam` command line) does not import Keras
before `--backend` has chosen the backend.
"""

from keras_sam._lazy import exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "SAM": "keras_sam.models.sam",
    "SAMPredictor": "keras_sam.predictor",
    "SAMImageEncoder": "keras_sam.models.image_encoder",
    "SAMMaskDecoder": "keras_sam.layers.mask_decoder",
    "SAMPromptEncoder": "keras_sam.layers.prompt_encoder",
    "load_official_weights": "keras_sam.convert.weights",
    "layers": "keras_sam.layers",
    "models": "keras_sam.models",
    "convert": "keras_sam.convert",
    "datasets": "keras_sam.datasets",
    "losses": "keras_sam.losses",
    "SAMAutomaticMaskGenerator": "keras_sam.automatic_mask_generator",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = exports(__name__, _EXPORTS, globals())
