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
    mlp_ratio=2.0,
    mbconv_expansion_ratio=2.0,
    local_conv_size=3,
    num_output_channels=16,
)


HEAD_KEYS = ("head.weight", "head.bias", "norm_head.weight", "norm_head.bias")


@pytest.mark.integration
@pytest.mark.parity
def test_full_size_matches_official_mobile_sam_encoder():
    # MobileSAM's own TinyViT-5M (random weights) at 1024 pixels; the
    # predictor tests compare a smaller one on every backend.
    module = reference.build_sam_vit_t().image_encoder
    reference.randomize_(module, seed=0)
    module.eval()
    config = keras_sam.models.PRESETS["mobile_sam"]["image_encoder"]
    layer = TinyViTImageEncoder(**config, name="image_encoder")
    keras_sam.load_official_weights(layer, reference.state_dict(module))
    images = np.random.default_rng(0).standard_normal((1, 1024, 1024, 3))
    images = images.astype("float32")
    with torch.no_grad():
        expected = module(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    out = layer(images)
    assert tuple(out.shape) == (1, 64, 64, 256)
    helpers.assert_close(
        out,
        expected.numpy().transpose(0, 2, 3, 1),
        helpers.IMAGE_ENCODER_RTOL,
        "mobile_sam encoder",
    )


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
    # Shapes only on our side (the official TinyViT's constructor reads
    # tensor values, so it cannot be built on the meta device).
    module = reference.build_sam_vit_t()
    preset = keras_sam.models.PRESETS["mobile_sam"]
    with keras.StatelessScope(initialize_variables=False):
        model = keras_sam.SAM.from_config_dicts(
            preset["image_encoder"],
            preset["prompt_encoder"],
            preset["mask_decoder"],
        )
        model.build()
    encoder_params, encoder_all = _official_counts(module.image_encoder)
    ours = model.image_encoder
    assert helpers.count_params(ours.trainable_weights) == encoder_params
    assert helpers.count_params(ours.weights) == encoder_all
    rest = sum(
        p.numel()
        for name, p in module.named_parameters()
        if not name.startswith("image_encoder.")
    )
    assert helpers.count_params(model.trainable_weights) == (
        encoder_params + rest
    )


def test_table_uses_every_official_key_once():
    module = reference.tiny_vit_module(reference.SMALL)
    with keras.StatelessScope(initialize_variables=False):
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
    # Shapes and config only: the eager numerics are the predictor tests'
    # (test_mobile_sam.py), and on JAX every new variable shape compiles.
    with keras.StatelessScope(initialize_variables=False):
        layer = TinyViTImageEncoder(**TOY)
        layer.build()
        assert layer.compute_output_shape((2, 64, 64, 3)) == (2, 8, 8, 16)
        spec = layer.compute_output_spec(keras.KerasTensor((None, 64, 64, 3)))
        assert tuple(spec.shape) == (None, 8, 8, 16)
        config = keras.saving.serialize_keras_object(layer)
        clone = keras.saving.deserialize_keras_object(config)
        if not clone.built:
            clone.build()
    assert clone.get_config() == layer.get_config()
    paths = [(w.path, tuple(w.shape)) for w in layer.weights]
    assert [(w.path, tuple(w.shape)) for w in clone.weights] == paths


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
        layer.compute_output_shape((1, 32, 64, 3))
