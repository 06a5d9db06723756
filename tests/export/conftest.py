"""Fixtures of the export tests: one tiny SAM with official weights,
exported once per session."""

import keras
import pytest

from support.fixtures import DECODER
from support.fixtures import ENCODER
from support.fixtures import PROMPT


@pytest.fixture(scope="session")
def official_and_ours():
    """The official tiny `Sam` (seeded random weights) and ours with the
    same weights."""
    import keras_sam
    from keras_sam.models.sam import SAM
    from support.reference import official

    ref = official.make_sam(
        ENCODER, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, seed=0
    )
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    keras_sam.load_official_weights(model, ref.state_dict())
    return ref, model


@pytest.fixture(scope="session")
def exported(official_and_ours, tmp_path_factory):
    """A folder with our `decoder.onnx` (all four masks) and
    `image_encoder.onnx`, the latter with its weights forced into an
    external data file (the ViT-L/H code path, on a tiny model)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the exporters run on the TensorFlow backend")
    from keras_sam.export import export_decoder_onnx
    from keras_sam.export import export_image_encoder_onnx

    _, model = official_and_ours
    folder = tmp_path_factory.mktemp("exported")
    export_decoder_onnx(model, folder / "decoder.onnx")
    export_image_encoder_onnx(
        model, folder / "image_encoder.onnx", external_data=True
    )
    return folder
