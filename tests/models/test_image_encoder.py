"""SAMImageEncoder: parity with the official ImageEncoderViT, conversion
table, parameter counts, layer harness, mixed precision and argument checks.
"""

import keras
import numpy as np
import pytest
import torch

import keras_sam
import support.reference.official as official  # installs the torchvision stub
from keras_sam.models import SAMImageEncoder
from tests import helpers

TINY = dict(
    hidden_size=64,
    num_layers=2,
    intermediate_dim=256,
    num_heads=4,
    global_attention_layer_indices=(1,),
    image_shape=(96, 96, 3),
    patch_size=16,
    num_output_channels=32,
    window_size=4,
)

PARITY_CONFIGS = {
    # 6x6 grid, 4x4 windows: the windowed block pads to 8x8.
    "padded_windows": TINY,
    # 4x8 grid: non-square, windows tile it without padding.
    "non_square": {**TINY, "image_shape": (64, 128, 3)},
    # No qkv bias, no position embeddings, every block global.
    "plain": {
        **TINY,
        "image_shape": (64, 80, 3),
        "global_attention_layer_indices": (),
        "window_size": 0,
        "use_bias": False,
        "use_abs_pos": False,
        "use_rel_pos": False,
    },
}

FULL_CONFIGS = {
    "vit_b": dict(
        hidden_size=768,
        num_layers=12,
        intermediate_dim=3072,
        num_heads=12,
        global_attention_layer_indices=(2, 5, 8, 11),
    ),
    "vit_l": dict(
        hidden_size=1024,
        num_layers=24,
        intermediate_dim=4096,
        num_heads=16,
        global_attention_layer_indices=(5, 11, 17, 23),
    ),
    "vit_h": dict(
        hidden_size=1280,
        num_layers=32,
        intermediate_dim=5120,
        num_heads=16,
        global_attention_layer_indices=(7, 15, 23, 31),
    ),
}

# Published counts (SAM_NOTES; KerasHub's preset table swaps L and H).
PUBLISHED_COUNTS = {"vit_b": 89_670_912, "vit_h": 637_026_048}


def _official_encoder(config: dict, seed: int = 0):
    return official.make_image_encoder(config, seed)


def _load(layer: SAMImageEncoder, module) -> None:
    keras_sam.load_official_weights(layer, module.state_dict())


def _images(config: dict, batch: int = 2) -> np.ndarray:
    shape = (batch,) + tuple(config["image_shape"])
    return np.random.default_rng(0).standard_normal(shape).astype("float32")


@pytest.mark.parity
@pytest.mark.parametrize("case", sorted(PARITY_CONFIGS))
def test_matches_official_image_encoder(case):
    config = PARITY_CONFIGS[case]
    module = _official_encoder(config)
    layer = SAMImageEncoder(**config)
    _load(layer, module)
    images = _images(config)
    with torch.no_grad():
        ref = module(torch.from_numpy(official.nhwc_to_nchw(images)))
    ref = official.nchw_to_nhwc(official.to_numpy(ref))
    helpers.assert_close(layer(images), ref, helpers.IMAGE_ENCODER_RTOL, case)


@pytest.mark.parametrize("name", sorted(FULL_CONFIGS))
def test_parameter_count_matches_official(name):
    config = FULL_CONFIGS[name]
    # Shapes only: neither side allocates the weights.
    with keras.StatelessScope(initialize_variables=False):
        layer = SAMImageEncoder(**config)
        layer.build()
    with torch.device("meta"):
        module = official.image_encoder_module(config)
    params = list(module.parameters())
    assert len(layer.weights) == len(params)
    count = helpers.count_params(layer.weights)
    assert count == sum(p.numel() for p in params)
    assert count == PUBLISHED_COUNTS.get(name, count)


def test_layer_harness(tmp_path):
    module = official.image_encoder_module(TINY)
    helpers.run_layer_test(
        SAMImageEncoder,
        TINY,
        {"images": _images(TINY)},
        expected_num_trainable_weights=len(list(module.parameters())),
        tmp_path=tmp_path,
    )


def test_mixed_bfloat16():
    reference = SAMImageEncoder(**TINY)
    _load(reference, _official_encoder(TINY))
    layer = SAMImageEncoder(**TINY, dtype="mixed_bfloat16")
    layer.build()
    layer.set_weights(reference.get_weights())
    images = _images(TINY)
    out = layer(images)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert {v.dtype for v in layer.weights} == {"float32"}
    out = helpers.to_numpy(out).astype("float32")
    helpers.assert_close(
        out,
        helpers.to_numpy(reference(images)),
        helpers.BFLOAT16_RTOL,
        "bfloat16",
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_heads": 5}, "num_heads"),
        ({"num_layers": 0}, "num_layers"),
        ({"intermediate_dim": 0}, "intermediate_dim"),
        ({"patch_size": 0}, "patch_size"),
        ({"num_output_channels": 0}, "num_output_channels"),
        ({"window_size": -1}, "window_size"),
        ({"layer_norm_epsilon": 0.0}, "layer_norm_epsilon"),
        ({"global_attention_layer_indices": (2,)}, "global_attention"),
        ({"global_attention_layer_indices": (-1,)}, "global_attention"),
        ({"global_attention_layer_indices": None}, "global_attention"),
        ({"image_shape": (96, 100, 3)}, "image_shape"),
        ({"image_shape": (96, 96)}, "image_shape"),
    ],
)
def test_bad_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        SAMImageEncoder(**{**TINY, **overrides})


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 96, 96), "rank 4"),
        ((2, 96, 96, 1), "channels"),
        ((2, 80, 96, 3), "height"),
        ((2, 96, 112, 3), "width"),
    ],
)
def test_bad_input_shape(shape, match):
    layer = SAMImageEncoder(**TINY)
    with pytest.raises(ValueError, match=f"images.*{match}"):
        layer(np.zeros(shape, "float32"))
    with pytest.raises(ValueError, match=match):
        layer.compute_output_shape(shape)
