"""A SAM with a TinyViT image encoder (MobileSAM) exports to ONNX and runs
in ONNX Runtime as in Keras."""

import keras
import numpy as np
import pytest

from support.fixtures import smooth_image
from tests import helpers

pytestmark = pytest.mark.integration

ENCODER = dict(
    hidden_sizes=(8, 16, 24),
    num_layers=(1, 1, 1),
    num_heads=(2, 3),
    window_sizes=(5, 4),
    downsample_strides=(2, 1),
    image_shape=(64, 64, 3),
    num_output_channels=16,
)
PROMPT = dict(
    hidden_size=16, image_embedding_size=(8, 8), input_image_size=(64, 64)
)
DECODER = dict(
    hidden_size=16,
    num_layers=2,
    intermediate_dim=32,
    num_heads=2,
    embedding_dim=16,
)


def test_tiny_vit_exports_and_matches_keras(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.fail("the exporters run on the TensorFlow backend")
    from keras_sam.export import OnnxPredictor
    from keras_sam.export import export_decoder_onnx
    from keras_sam.export import export_image_encoder_onnx
    from keras_sam.inference.predictor import SAMPredictor
    from keras_sam.models.sam import SAM

    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    model.build()
    export_decoder_onnx(model, tmp_path / "decoder.onnx")
    export_image_encoder_onnx(model, tmp_path / "image_encoder.onnx")
    image = smooth_image((120, 90, 3))
    ours = SAMPredictor(model)
    ours.set_image(image)
    onnx = OnnxPredictor(tmp_path)
    onnx.set_image(image)
    expected = ours.get_image_embedding().transpose(0, 3, 1, 2)
    helpers.assert_close(
        onnx.get_image_embedding(), expected, helpers.PREDICTOR_RTOL
    )
    box = np.array([10.0, 20.0, 70.0, 100.0])
    _, scores, low = onnx.predict(box=box, return_logits=True)
    _, ref_scores, ref_low = ours.predict(box=box, return_logits=True)
    helpers.assert_close(low, ref_low, helpers.PREDICTOR_RTOL, "low")
    helpers.assert_close(scores, ref_scores, helpers.PREDICTOR_RTOL, "scores")
