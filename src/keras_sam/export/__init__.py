"""Export: SAM as ONNX (`decoder.onnx`, `image_encoder.onnx`), LiteRT and
TensorFlow SavedModel files, and `OnnxPredictor` to run the ONNX files in
ONNX Runtime without Keras. The exporters run on the TensorFlow backend.

The public names are imported lazily, so that `OnnxPredictor` imports
neither Keras nor a backend.
"""

from keras_sam.lazy import exports

_EXPORTS = {
    "export_model": "keras_sam.export.bundle",
    "export_decoder_onnx": "keras_sam.export.onnx",
    "export_image_encoder_onnx": "keras_sam.export.onnx",
    "OnnxPredictor": "keras_sam.export.onnx_predictor",
    "interface": "keras_sam.export.interface",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = exports(__name__, _EXPORTS, globals())
