"""Comparisons, runtimes and the command line for the export tests."""

import contextlib
import io
import os
import warnings

import numpy as np

from keras_sam.export import interface
from tests import helpers


def assert_masks_equal(actual_logits, expected_logits):
    """Thresholded masks equal except where the expected logit is within
    `MASK_LOGIT_MARGIN` of the threshold."""
    differ = (actual_logits > 0) != (expected_logits > 0)
    near = np.abs(expected_logits) < helpers.MASK_LOGIT_MARGIN
    assert not np.any(differ & ~near), int(np.sum(differ & ~near))


class LiteRTSession:
    """A `.tflite` file behind ONNX Runtime's `session.run(names, feed)`,
    so that `OnnxPredictor` runs it (`predictor.decoder = ...`). The
    interpreter resizes the dynamic axes to each feed."""

    def __init__(self, path, outputs):
        import tensorflow as tf

        with warnings.catch_warnings():
            # TensorFlow's interpreter points to ai_edge_litert, the same
            # runtime in its own package.
            warnings.simplefilter("ignore", UserWarning)
            interpreter = tf.lite.Interpreter(model_path=str(path))
        self.runner = interpreter.get_signature_runner("serving_default")
        self.outputs = outputs

    def run(self, names, feed):
        out = self.runner(**feed)
        return [out[n] for n in names or self.outputs]


class SavedModelSession:
    """A SavedModel folder's `serve` signature behind `session.run`."""

    def __init__(self, path, outputs):
        import tensorflow as tf

        self.serve = tf.saved_model.load(str(path)).signatures["serve"]
        self.outputs = outputs

    def run(self, names, feed):
        out = self.serve(**feed)
        return [out[n].numpy() for n in names or self.outputs]


def predictors(exported, litert=None, saved_model=None) -> dict:
    """`{runtime: OnnxPredictor}` on the ONNX files, and with the LiteRT
    (decoder and image encoder) and SavedModel (decoder) files in place
    of the ONNX sessions."""
    from keras_sam.export import OnnxPredictor

    out = {"onnx": OnnxPredictor(exported)}
    if litert is not None:
        lite = OnnxPredictor(exported)
        lite.decoder = LiteRTSession(
            litert / "decoder.tflite", interface.DECODER_OUTPUTS
        )
        lite.image_encoder = LiteRTSession(
            litert / "image_encoder.tflite", interface.IMAGE_ENCODER_OUTPUTS
        )
        out["litert"] = lite
    if saved_model is not None:
        saved = OnnxPredictor(exported)
        saved.decoder = SavedModelSession(
            saved_model, interface.DECODER_OUTPUTS
        )
        saved.image_encoder = None
        out["saved_model"] = saved
    return out


def run_cli(*args) -> tuple[int, str]:
    """`keras-sam ARGS` in this process (the model is tiny; a subprocess
    would import TensorFlow again): exit status and stdout. The variables
    the command sets for itself are restored."""
    from keras_sam.cli import main

    environ = dict(os.environ)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main([str(a) for a in args])
    finally:
        os.environ.clear()
        os.environ.update(environ)
    return code, out.getvalue()
