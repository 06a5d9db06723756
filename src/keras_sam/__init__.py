"""keras-sam: Segment Anything (SAM) for Keras 3.

The public names below are imported lazily (PEP 562), so that importing
`keras_sam` (e.g. by the `keras-sam` command line) does not import Keras
before `--backend` has chosen the backend.
"""

import os
import sys

from keras_sam.lazy import exports

# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512
# neural-network instructions; on others (AVX2 machines, AMD's included) it
# runs Eigen's, at about half the speed for SAM's matrix products. The switch
# is read once, when TensorFlow is imported, so it can only be set before;
# a user's own setting (`TF_ENABLE_ONEDNN_OPTS=0`) wins.
if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "SAM": "keras_sam.models.sam",
    "SAMImageEncoder": "keras_sam.models.image_encoder",
    "TinyViTImageEncoder": "keras_sam.models.tiny_vit",
    "SAMMaskDecoder": "keras_sam.layers.mask_decoder",
    "SAMPromptEncoder": "keras_sam.layers.prompt_encoder",
    "SAMPredictor": "keras_sam.inference.predictor",
    "SAMAutomaticMaskGenerator": "keras_sam.inference.automatic_mask_generator",
    "SAMLoss": "keras_sam.training.losses",
    "ShapesDataset": "keras_sam.training.datasets.shapes",
    "evaluate_shapes": "keras_sam.training.evaluation",
    "load_official_weights": "keras_sam.convert.weights",
    # rooms
    "layers": "keras_sam.layers",
    "models": "keras_sam.models",
    "convert": "keras_sam.convert",
    "inference": "keras_sam.inference",
    "training": "keras_sam.training",
    "bulk": "keras_sam.bulk",
    # short names for the training rooms' public modules
    "datasets": "keras_sam.training.datasets",
    "losses": "keras_sam.training.losses",
    "evaluation": "keras_sam.training.evaluation",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = exports(__name__, _EXPORTS, globals())
