"""MobileSAM: a saved official MobileSAM state dict loads by detection
(`SAM.from_checkpoint`), and the predictor matches the official
`mobile_sam` predictor; the keras-sam safetensors round trip; bad files."""

import numpy as np
import pytest
import torch

import keras_sam
from keras_sam.convert import checkpoint
from keras_sam.inference.predictor import SAMPredictor
from keras_sam.models.sam import SAM
from keras_sam.models.tiny_vit import TinyViTImageEncoder
from support.fixtures import smooth_image
from support.reference import mobile_sam as reference
from tests import helpers


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The official small MobileSAM and its `torch.save`d state dict (with
    the BatchNorm step counters, as the official file)."""
    ref = reference.make_mobile_sam(reference.SMALL, seed=0)
    path = tmp_path_factory.mktemp("mobile_sam") / "mobile_sam.pt"
    torch.save(ref.state_dict(), path)
    return ref, path


@pytest.fixture(scope="module")
def pair(saved):
    ref_model, path = saved
    model = SAM.from_checkpoint(path, mask_decoder_num_heads=2)
    image = smooth_image()
    ref = reference.SamPredictor(ref_model)
    reference.set_image_without_torchvision(ref, image)
    ours = SAMPredictor(model)
    ours.set_image(image)
    return ours, ref


def test_detects_the_mobile_sam_layout(saved):
    _, path = saved
    config = checkpoint.detect_architecture(checkpoint.read_state_dict(path))
    assert config["image_encoder"] == {
        k: tuple(v) if isinstance(v, tuple) else v
        for k, v in reference.SMALL.items()
    }
    assert config["prompt_encoder"]["image_embedding_size"] == (64, 64)
    assert config["mask_decoder"]["hidden_size"] == 32


@pytest.mark.parity
def test_image_embedding_matches_official(pair):
    ours, ref = pair
    assert isinstance(ours.model.image_encoder, TinyViTImageEncoder)
    expected = ref.features.numpy().transpose(0, 2, 3, 1)
    helpers.assert_close(
        ours.get_image_embedding(), expected, helpers.IMAGE_ENCODER_RTOL
    )


PROMPTS = {
    "points": dict(
        point_coords=[[320.0, 200.0], [100.5, 400.0]], point_labels=[1, 0]
    ),
    "box": dict(box=[120.0, 80.0, 500.0, 420.0]),
}


@pytest.mark.parity
@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_predict_matches_official(pair, prompt, multimask_output):
    ours, ref = pair
    kwargs = {k: np.asarray(v) for k, v in PROMPTS[prompt].items()}
    ref_masks, ref_scores, ref_low = ref.predict(
        **kwargs, multimask_output=multimask_output
    )
    ref_logits, _, _ = ref.predict(
        **kwargs, multimask_output=multimask_output, return_logits=True
    )
    masks, scores, low = ours.predict(
        **kwargs, multimask_output=multimask_output
    )
    helpers.assert_close(low, ref_low, helpers.PREDICTOR_RTOL, "low")
    helpers.assert_close(scores, ref_scores, helpers.PREDICTOR_RTOL, "scores")
    near = np.abs(ref_logits) < helpers.MASK_LOGIT_MARGIN
    assert masks.shape == ref_masks.shape
    assert not np.any((masks != ref_masks) & ~near)


def test_keras_safetensors_round_trip(pair, tmp_path):
    model = pair[0].model
    path = tmp_path / "mobile.safetensors"
    model.save_keras_safetensors(path)
    loaded = SAM.from_checkpoint(path)
    assert isinstance(loaded.image_encoder, TinyViTImageEncoder)
    assert loaded.image_encoder.get_config() == (
        model.image_encoder.get_config()
    )
    for a, b in zip(model.weights, loaded.weights, strict=True):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loading_is_all_or_nothing(saved, pair):
    encoder = pair[0].model.image_encoder
    module = saved[0].image_encoder
    before = [np.array(w) for w in encoder.get_weights()]
    state = reference.state_dict(module)
    del state["layers.2.blocks.0.mlp.fc1.bias"]
    state["layers.1.blocks.0.attn.attention_biases"] = torch.zeros(2, 50)
    with pytest.raises(ValueError) as info:
        keras_sam.load_official_weights(encoder, state)
    message = str(info.value)
    assert "missing keys (1): layers.2.blocks.0.mlp.fc1.bias" in message
    assert "layers.1.blocks.0.attn.attention_biases: (2, 50)" in message
    for old, new in zip(before, encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    # The unused classifier head is optional (reloading the same weights);
    # anything else is not.
    state = reference.state_dict(module)
    for key in ("head.weight", "head.bias", "norm_head.weight"):
        del state[key]
    keras_sam.load_official_weights(encoder, state)
    for old, new in zip(before, encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    state["head.extra"] = module.head.weight
    with pytest.raises(ValueError, match="unexpected keys .1.: head.extra"):
        keras_sam.load_official_weights(encoder, state)


def test_truncated_file_is_refused(saved, tmp_path):
    data = saved[1].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SAM.from_checkpoint(path)


def _saved_state(saved, tmp_path, edit) -> str:
    state = saved[0].state_dict()
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return str(path)


def test_missing_weight_is_named(saved, tmp_path):
    key = "image_encoder.layers.2.blocks.0.mlp.fc2.weight"
    path = _saved_state(saved, tmp_path, lambda s: s.pop(key))
    with pytest.raises(ValueError, match="missing keys") as info:
        SAM.from_checkpoint(path)
    assert path in str(info.value) and "layers.2.blocks.0.mlp.fc2" in str(
        info.value
    )


def test_mixed_layouts_are_refused(saved, tmp_path):
    def add_vit_block(state):
        state["image_encoder.blocks.0.attn.qkv.weight"] = torch.ones(9, 3)

    path = _saved_state(saved, tmp_path, add_vit_block)
    with pytest.raises(ValueError, match="unexpected keys") as info:
        SAM.from_checkpoint(path)
    assert "image_encoder: unexpected keys (1): blocks.0.attn.qkv" in str(
        info.value
    )


def test_non_square_attention_biases_are_refused(saved, tmp_path):
    key = "image_encoder.layers.1.blocks.0.attn.attention_biases"

    def edit(state):
        state[key] = torch.ones(2, 50)

    path = _saved_state(saved, tmp_path, edit)
    with pytest.raises(ValueError, match="square number") as info:
        SAM.from_checkpoint(path)
    assert path in str(info.value)
