"""TinyViTImageEncoder (MobileSAM): parity with the official TinyViT,
parameter counts, conversion table, config round trip and argument checks.
"""

import keras
import numpy as np
import pytest
import torch

import keras_sam
from keras_sam.convert import tiny_vit_mapping
from keras_sam.models import TinyViTImageEncoder
from support.reference import mobile_sam as reference
from tests import helpers

# A toy configuration our encoder builds (the official forward pass only
# runs 1024-pixel inputs): stage 1 on a 16x16 grid in 5x5 windows (padded
# to 20x20), stage 2 on 8x8 in 4x4 windows.
TOY = dict(
    hidden_sizes=(8, 16, 24),
    num_layers=(1, 2, 1),
    num_heads=(2, 3),
    window_sizes=(5, 4),
    downsample_strides=(2, 1),
    image_shape=(64, 64, 3),
    num_output_channels=16,
)
HEAD_KEYS = ("head.weight", "head.bias", "norm_head.weight", "norm_head.bias")


@pytest.fixture(scope="module")
def small_pair():
    module = reference.make_tiny_vit(reference.SMALL, seed=0)
    images = (
        np.random.default_rng(0).standard_normal((1, 1024, 1024, 3))
    ).astype("float32")
    with torch.no_grad():
        ref = module(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    return module, images, ref.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parity
def test_matches_official_tiny_vit(small_pair):
    module, images, expected = small_pair
    layer = TinyViTImageEncoder(**reference.SMALL, name="image_encoder")
    keras_sam.load_official_weights(layer, reference.state_dict(module))
    out = layer(images)
    assert tuple(out.shape) == (1, 64, 64, 32)
    helpers.assert_close(out, expected, helpers.IMAGE_ENCODER_RTOL, "tiny_vit")


def _official_counts(module) -> tuple[int, int]:
    """(parameters, parameters and BatchNorm statistics) of an official
    TinyViT, without the classifier head MobileSAM never runs."""
    params = sum(
        p.numel()
        for name, p in module.named_parameters()
        if not name.startswith(("head.", "norm_head."))
    )
    stats = sum(
        b.numel()
        for name, b in module.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    )
    return params, params + stats


def test_parameter_count_matches_official_mobile_sam():
    module = reference.build_sam_vit_t()
    layer = keras_sam.SAM.from_preset("mobile_sam")
    encoder_params, encoder_all = _official_counts(module.image_encoder)
    ours = layer.image_encoder
    assert helpers.count_params(ours.trainable_weights) == encoder_params
    assert helpers.count_params(ours.weights) == encoder_all
    rest = sum(
        p.numel()
        for name, p in module.named_parameters()
        if not name.startswith("image_encoder.")
    )
    assert helpers.count_params(layer.trainable_weights) == (
        encoder_params + rest
    )


def test_table_uses_every_official_key_once():
    module = reference.tiny_vit_module(reference.SMALL)
    layer = TinyViTImageEncoder(**reference.SMALL)
    layer.build()
    rows = tiny_vit_mapping.tiny_vit_table(layer)
    keys = [r.torch_key for r in rows]
    paths = [r.keras_path for r in rows if r.keras_path]
    official_keys = set(reference.state_dict(module))
    assert len(keys) == len(set(keys)) and set(keys) == official_keys
    ours = {w.path.split("/", 1)[1] for w in layer.weights}
    assert len(paths) == len(set(paths)) and set(paths) == ours
    assert {r.torch_key for r in rows if not r.keras_path} == set(HEAD_KEYS)


def test_loading_is_all_or_nothing():
    module = reference.tiny_vit_module(reference.SMALL)
    layer = TinyViTImageEncoder(**reference.SMALL)
    layer.build()
    before = [np.array(w) for w in layer.get_weights()]
    state = reference.state_dict(module)
    del state["head.weight"]  # present in every official TinyViT
    state["layers.1.blocks.0.attn.attention_biases"] = torch.zeros(2, 50)
    with pytest.raises(ValueError) as info:
        keras_sam.load_official_weights(layer, state)
    message = str(info.value)
    assert "missing keys (1): head.weight" in message
    assert "layers.1.blocks.0.attn.attention_biases: (2, 50)" in message
    for old, new in zip(before, layer.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_depthwise_transform_matches_torch():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 1, 3, 3)).astype("float32")
    x = rng.standard_normal((1, 6, 7, 7)).astype("float32")
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(weight), padding=1, groups=6
    ).numpy()
    conv = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)
    conv.build((None, 7, 7, 6))
    from keras_sam.convert.torch_mapping import TRANSFORMS

    conv.kernel.assign(TRANSFORMS["depthwise_conv2d"](weight))
    out = conv(x.transpose(0, 2, 3, 1))
    helpers.assert_close(out, ref.transpose(0, 2, 3, 1), 1e-6, "depthwise")


def test_config_round_trip_and_shapes():
    layer = TinyViTImageEncoder(**TOY)
    images = np.random.default_rng(1).standard_normal((2, 64, 64, 3))
    out = layer(images)
    assert tuple(out.shape) == (2, 8, 8, 16)
    assert layer.compute_output_shape((2, 64, 64, 3)) == (2, 8, 8, 16)
    symbolic = layer.compute_output_spec(keras.KerasTensor((None, 64, 64, 3)))
    assert tuple(symbolic.shape) == (None, 8, 8, 16)
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    if not clone.built:
        clone.build()
    clone.set_weights(layer.get_weights())
    helpers.assert_close(
        clone(images), out, helpers.SAME_BACKEND_RTOL, "round trip"
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"hidden_sizes": (8,), "num_layers": (1,)}, "hidden_sizes"),
        ({"num_layers": (1, 1)}, "num_layers"),
        ({"num_heads": (3, 3)}, "num_heads"),
        ({"window_sizes": (0, 4)}, "window_sizes"),
        ({"image_shape": (60, 64, 3)}, "image_shape"),
        ({"mlp_ratio": 0}, "mlp_ratio"),
    ],
)
def test_bad_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        TinyViTImageEncoder(**{**TOY, **overrides})


def test_wrong_image_size_is_refused():
    layer = TinyViTImageEncoder(**TOY)
    with pytest.raises(ValueError, match="images"):
        layer(np.zeros((1, 32, 64, 3), "float32"))
