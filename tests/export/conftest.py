"""Fixtures of the export tests: one tiny SAM with official weights, and
its exports (made once per session, shared by every agreement test)."""

import keras
import pytest

from support.fixtures import DECODER
from support.fixtures import ENCODER
from support.fixtures import PROMPT
from tests.export.helpers import run_cli


def require_tensorflow() -> None:
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the exporters run on the TensorFlow backend")


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
def checkpoint(official_and_ours, tmp_path_factory):
    """Our model as safetensors, for the command line (they keep the
    architecture; an official .pth would be read with the default 8
    decoder heads instead of the tiny model's 2)."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    official_and_ours[1].save_keras_safetensors(path)
    return path


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """`keras-sam export --checkpoint tiny.safetensors -o DIR`: our
    `decoder.onnx` (all four masks) and `image_encoder.onnx`, the latter's
    weights in an external data file (the size threshold lowered to 0:
    the ViT-L/H code path, on a tiny model)."""
    require_tensorflow()
    from keras_sam.export import onnx

    folder = tmp_path_factory.mktemp("exported")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx, "EXTERNAL_DATA_BYTES", 0)
        code, out = run_cli("export", "--checkpoint", checkpoint, "-o", folder)
    assert code == 0
    names = ["decoder.onnx", "image_encoder.onnx", "image_encoder.onnx.data"]
    assert out.split() == [str(folder / n) for n in names]
    return folder


@pytest.fixture(scope="session")
def litert(official_and_ours, tmp_path_factory):
    """`decoder.tflite` and `image_encoder.tflite` (`export_model`)."""
    require_tensorflow()
    from keras_sam.export import export_model

    folder = tmp_path_factory.mktemp("litert")
    written = export_model(official_and_ours[1], folder, format="litert")
    assert written == [
        folder / n for n in ("decoder.tflite", "image_encoder.tflite")
    ]
    return folder


@pytest.fixture(scope="session")
def saved_model(official_and_ours, tmp_path_factory):
    """The decoder as a SavedModel folder (`export_model`)."""
    require_tensorflow()
    from keras_sam.export import export_model

    folder = tmp_path_factory.mktemp("saved_model")
    written = export_model(
        official_and_ours[1], folder, format="saved_model", decoder_only=True
    )
    assert written == [folder / "decoder_saved_model"]
    return written[0]
