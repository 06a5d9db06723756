"""The bfloat16 opt-in: the policy reaches the encoder and the decoder,
outputs stay float32, the config round trip keeps it, the command line flag
and the embeddings' model fingerprint follow it."""

import keras
import numpy as np
import pytest

from keras_sam.cli import build_parser
from keras_sam.inference.embeddings import model_fingerprint
from keras_sam.inference.predictor import SAMPredictor
from keras_sam.models.precision import check_precision
from keras_sam.models.precision import dtype_policy
from keras_sam.models.sam import SAM
from support.fixtures import DECODER
from support.fixtures import ENCODER
from support.fixtures import PROMPT
from support.fixtures import smooth_image

CLICK = dict(point_coords=np.array([[70.0, 40.0]]), point_labels=np.array([1]))


def _model(precision: str) -> SAM:
    keras.utils.set_random_seed(0)
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER, precision=precision)
    model.build()
    return model


@pytest.fixture(scope="module")
def models():
    """The same random weights in float32 and in bfloat16."""
    float32 = _model("float32")
    bf16 = _model("bf16")
    bf16.set_weights(float32.get_weights())
    return float32, bf16


def test_precision_names():
    assert check_precision("bf16") == "bfloat16"
    assert dtype_policy("bfloat16") == "mixed_bfloat16"
    assert dtype_policy("float32") == "float32"
    with pytest.raises(ValueError, match="precision='float16'"):
        check_precision("float16")
    with pytest.raises(ValueError, match="precision"):
        SAM.from_preset("sam_shapes", precision="int4")


def test_the_policy_reaches_encoder_and_decoder(models):
    float32, bf16 = models
    assert float32.precision == "float32"
    assert bf16.precision == "bfloat16"
    for layer in (bf16.image_encoder, bf16.mask_decoder):
        assert layer.dtype_policy.name == "mixed_bfloat16"
        assert layer.compute_dtype == "bfloat16"
    # float32 Fourier features place points to the pixel.
    assert bf16.prompt_encoder.dtype_policy.name == "float32"
    assert {v.dtype for v in bf16.weights} == {"float32"}


def test_outputs_are_float32_and_agree(models):
    float32, bf16 = models
    image = smooth_image((90, 120, 3), seed=3)
    results = []
    for model in models:
        predictor = SAMPredictor(model)
        predictor.set_image(image)
        assert predictor.get_image_embedding().dtype == np.float32
        masks, scores, logits = predictor.predict(**CLICK, return_logits=True)
        assert masks.dtype == scores.dtype == logits.dtype == np.float32
        results.append(logits)
    ref, got = results
    assert not np.array_equal(ref, got)  # bf16 did compute differently
    # Random weights: agreement over pixels with a clear float32 sign.
    confident = np.abs(ref) > 0.02 * np.abs(ref).max()
    a, b = ref[confident] > 0, got[confident] > 0
    assert np.sum(a & b) / max(np.sum(a | b), 1) > 0.95


def test_config_round_trip_keeps_the_precision(models):
    _, bf16 = models
    clone = SAM.from_config(bf16.get_config())
    assert clone.precision == "bfloat16"
    assert clone.mask_decoder.dtype_policy.name == "mixed_bfloat16"


def test_keras_safetensors_load_in_the_precision_asked(models, tmp_path):
    float32, _ = models
    path = tmp_path / "tiny.safetensors"
    float32.save_keras_safetensors(path)
    loaded = SAM.from_checkpoint(path, precision="bfloat16")
    assert loaded.precision == "bfloat16"
    for a, b in zip(loaded.get_weights(), float32.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fingerprint_differs_by_precision(models):
    float32, bf16 = models
    assert model_fingerprint(float32) != model_fingerprint(bf16)


@pytest.mark.parametrize("command", ["segment", "auto", "embed"])
def test_cli_precision_flag(command, capsys):
    parser = build_parser()
    base = [command, "picture.png", "--preset", "sam_shapes", "-o", "out"]
    assert parser.parse_args(base).precision == "float32"
    assert parser.parse_args([*base, "--precision", "bf16"]).precision == (
        "bf16"
    )
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--precision", "float16"])
    assert "--precision" in capsys.readouterr().err


def test_export_has_no_precision_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            [
                "export",
                "--preset",
                "sam_shapes",
                "-o",
                "out",
                "--precision",
                "bf16",
            ]
        )
    assert "unrecognized arguments: --precision" in capsys.readouterr().err
