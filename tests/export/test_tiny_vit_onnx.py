"""A SAM with a TinyViT image encoder (MobileSAM) exports to ONNX and runs
in ONNX Runtime as in Keras."""

import keras
import pytest

from support.fixtures import smooth_image
from tests import helpers

# The exporters run on the TensorFlow backend: `make test` runs this there
# (not with the `integration` set, whose backend is another).
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the exporters run on the TensorFlow backend",
)

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


def test_tiny_vit_image_encoder_exports_and_matches_keras(tmp_path):
    # The decoder's export does not depend on the image encoder: only the
    # encoder is exported here.
    import onnxruntime

    from keras_sam.export import export_image_encoder_onnx
    from keras_sam.export import interface
    from keras_sam.inference.predictor import SAMPredictor
    from keras_sam.models.sam import SAM

    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    model.build()
    path = tmp_path / "image_encoder.onnx"
    export_image_encoder_onnx(model, path)
    # Long side 64, the model's input size: the predictor's resize keeps it.
    image = smooth_image((64, 48, 3))
    ours = SAMPredictor(model)
    ours.set_image(image)
    session = onnxruntime.InferenceSession(path)
    (embedding,) = session.run(None, {interface.IMAGE_ENCODER_INPUTS[0]: image})
    expected = ours.get_image_embedding().transpose(0, 3, 1, 2)
    helpers.assert_close(embedding, expected, helpers.PREDICTOR_RTOL)
