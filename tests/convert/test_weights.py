"""The official-weights converter `keras_sam.load_official_weights`."""

import collections

import keras
import numpy as np
import pytest
import torch

import keras_sam
from keras_sam.convert import torch_mapping
from keras_sam.layers import SAMMaskDecoder
from keras_sam.layers import SAMPromptEncoder
from support.reference import official
from tests import helpers

# Small configurations: (ours kwargs, official kwargs).
SMALL_ENCODER = (
    dict(
        hidden_size=16,
        image_embedding_size=(4, 6),
        input_image_size=(64, 96),
        mask_in_channels=8,
    ),
    dict(
        embed_dim=16,
        image_embedding_size=(4, 6),
        input_image_size=(64, 96),
        mask_in_chans=8,
    ),
)
SMALL_DECODER = (
    dict(
        hidden_size=16,
        num_layers=2,
        intermediate_dim=32,
        num_heads=2,
        embedding_dim=16,
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=24,
    ),
    dict(
        transformer_dim=16,
        depth=2,
        mlp_dim=32,
        num_heads=2,
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=24,
    ),
)
# ViT-B (every SAM size shares these two modules).
VIT_B_ENCODER = (dict(), dict())
VIT_B_DECODER = (
    dict(hidden_size=256, num_layers=2, intermediate_dim=2048, num_heads=8),
    dict(),
)


def small_encoder(seed=0):
    ours_kwargs, ref_kwargs = SMALL_ENCODER
    return SAMPromptEncoder(**ours_kwargs), official.make_prompt_encoder(
        **ref_kwargs, seed=seed
    )


def small_decoder(seed=0, **ref_overrides):
    ours_kwargs, ref_kwargs = SMALL_DECODER
    return SAMMaskDecoder(**ours_kwargs), official.make_mask_decoder(
        **{**ref_kwargs, **ref_overrides}, seed=seed
    )


def state_dict_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def weights_of(layer) -> list:
    if not layer.built:
        layer.build()
    return [np.array(w) for w in layer.get_weights()]


def assert_weights_equal(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def keras_variables(layer) -> dict:
    """Variables of `layer` keyed by their path below it."""
    base = layer.path + "/"
    return {v.path.removeprefix(base): v for v in layer.weights}


# -- (a) each transform against the torch op it stands for ---------------


def _linear_case(rng):
    torch.manual_seed(0)
    module = torch.nn.Linear(5, 7)
    layer = keras.layers.Dense(7)
    layer.build((None, 5))
    layer.set_weights(
        [
            torch_mapping.TRANSFORMS["linear"](
                official.to_numpy(module.weight)
            ),
            official.to_numpy(module.bias),
        ]
    )
    x = rng.normal(size=(3, 4, 5)).astype("float32")
    with torch.no_grad():
        ref = official.to_numpy(module(torch.from_numpy(x)))
    return layer(x), ref


def _conv_case(rng, torch_cls, keras_cls, transform, c_in, c_out, size):
    torch.manual_seed(0)
    module = torch_cls(c_in, c_out, kernel_size=2, stride=2)
    layer = keras_cls(c_out, 2, strides=2)
    layer.build((None, size, size + 2, c_in))
    layer.set_weights(
        [
            torch_mapping.TRANSFORMS[transform](
                official.to_numpy(module.weight)
            ),
            official.to_numpy(module.bias),
        ]
    )
    x = rng.normal(size=(2, size, size + 2, c_in)).astype("float32")
    with torch.no_grad():
        ref = module(torch.from_numpy(official.nhwc_to_nchw(x)))
    return layer(x), official.nchw_to_nhwc(official.to_numpy(ref))


def _depthwise_case(rng):
    """A depthwise convolution (torch `groups=C`, Keras DepthwiseConv2D),
    as TinyViT's MBConv blocks have."""
    torch.manual_seed(0)
    module = torch.nn.Conv2d(4, 4, kernel_size=3, padding=1, groups=4)
    layer = keras.layers.DepthwiseConv2D(3, padding="same")
    layer.build((None, 6, 7, 4))
    layer.set_weights(
        [
            torch_mapping.TRANSFORMS["depthwise_conv2d"](
                official.to_numpy(module.weight)
            ),
            official.to_numpy(module.bias),
        ]
    )
    x = rng.normal(size=(2, 6, 7, 4)).astype("float32")
    with torch.no_grad():
        ref = module(torch.from_numpy(official.nhwc_to_nchw(x)))
    return layer(x), official.nchw_to_nhwc(official.to_numpy(ref))


def _identity_case(rng):
    """Norm and embedding parameters keep their layout."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(6, eps=1e-6)
    embedding = torch.nn.Embedding(4, 6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    identity = torch_mapping.TRANSFORMS["identity"]
    keras_norm = keras.layers.LayerNormalization(epsilon=1e-6)
    keras_norm.build((None, 6))
    keras_norm.set_weights(
        [identity(official.to_numpy(p)) for p in (norm.weight, norm.bias)]
    )
    keras_embedding = keras.layers.Embedding(4, 6)
    keras_embedding.build((None,))
    keras_embedding.set_weights([identity(official.to_numpy(embedding.weight))])
    x = rng.normal(size=(3, 6)).astype("float32")
    ids = np.array([3, 0, 2], "int32")
    with torch.no_grad():
        ref = norm(torch.from_numpy(x)) + embedding(torch.from_numpy(ids))
    ours = keras.ops.add(keras_norm(x), keras_embedding(ids))
    return ours, official.to_numpy(ref)


TRANSFORM_CASES = {
    "identity": _identity_case,
    "depthwise_conv2d": _depthwise_case,
    "linear": _linear_case,
    "conv2d": lambda rng: _conv_case(
        rng, torch.nn.Conv2d, keras.layers.Conv2D, "conv2d", 3, 5, 8
    ),
    "conv2d_transpose": lambda rng: _conv_case(
        rng,
        torch.nn.ConvTranspose2d,
        keras.layers.Conv2DTranspose,
        "conv2d_transpose",
        5,
        3,
        4,
    ),
}


def test_every_transform_is_tested():
    assert set(TRANSFORM_CASES) == set(torch_mapping.TRANSFORMS)


@pytest.mark.parametrize("name", sorted(TRANSFORM_CASES))
def test_transform_matches_torch_op(name):
    ours, ref = TRANSFORM_CASES[name](np.random.default_rng(0))
    helpers.assert_close(ours, ref, helpers.TRANSFORM_RTOL, name)


# -- (b) whole official `Sam` state dicts ----------------------------------


def whole_sam_state_dict(encoder_ref, decoder_ref) -> dict:
    """A state dict laid out like an official `Sam`'s."""
    generator = torch.Generator().manual_seed(1)
    out = {
        "image_encoder.pos_embed": torch.randn(
            1, 4, 4, 16, generator=generator
        ),
        "image_encoder.patch_embed.proj.weight": torch.randn(
            16, 3, 2, 2, generator=generator
        ),
        "pixel_mean": torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1),
        "pixel_std": torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1),
    }
    for prefix, module in (
        ("prompt_encoder.", encoder_ref),
        ("mask_decoder.", decoder_ref),
    ):
        out.update({prefix + k: v for k, v in state_dict_of(module).items()})
    return out


def test_whole_sam_state_dict_equals_module_state_dicts():
    encoder, encoder_ref = small_encoder()
    decoder, decoder_ref = small_decoder()
    whole = whole_sam_state_dict(encoder_ref, decoder_ref)
    keras_sam.load_official_weights(encoder, whole)
    keras_sam.load_official_weights(decoder, whole)

    encoder_2, _ = small_encoder(seed=5)
    decoder_2, _ = small_decoder(seed=5)
    keras_sam.load_official_weights(encoder_2, state_dict_of(encoder_ref))
    keras_sam.load_official_weights(decoder_2, state_dict_of(decoder_ref))
    assert_weights_equal(weights_of(encoder), weights_of(encoder_2))
    assert_weights_equal(weights_of(decoder), weights_of(decoder_2))


def test_extra_key_under_the_prefix_is_unexpected():
    encoder, encoder_ref = small_encoder()
    decoder, decoder_ref = small_decoder()
    whole = whole_sam_state_dict(encoder_ref, decoder_ref)
    whole["mask_decoder.extra_head.weight"] = torch.zeros(2, 2)
    before = weights_of(decoder)
    with pytest.raises(ValueError, match="extra_head.weight"):
        keras_sam.load_official_weights(decoder, whole)
    assert_weights_equal(weights_of(decoder), before)
    keras_sam.load_official_weights(encoder, whole)  # not its prefix


# -- (c) torch tensors and NumPy arrays --------------------------------------


def test_numpy_and_torch_values_load_the_same():
    decoder, decoder_ref = small_decoder()
    state = state_dict_of(decoder_ref)
    keras_sam.load_official_weights(decoder, state)
    decoder_2, _ = small_decoder(seed=3)
    as_numpy = {k: official.to_numpy(v) for k, v in state.items()}
    assert all(isinstance(v, np.ndarray) for v in as_numpy.values())
    keras_sam.load_official_weights(decoder_2, as_numpy)
    assert_weights_equal(weights_of(decoder), weights_of(decoder_2))


def test_numpy_and_torch_values_mixed():
    encoder, encoder_ref = small_encoder()
    state = state_dict_of(encoder_ref)
    mixed = {
        k: official.to_numpy(v) if i % 2 else v
        for i, (k, v) in enumerate(state.items())
    }
    keras_sam.load_official_weights(encoder, mixed)
    encoder_2, _ = small_encoder(seed=3)
    keras_sam.load_official_weights(encoder_2, state)
    assert_weights_equal(weights_of(encoder), weights_of(encoder_2))


def test_bfloat16_tensors_load_as_their_float_values():
    encoder, encoder_ref = small_encoder()
    state = {
        k: v.to(torch.bfloat16) for k, v in state_dict_of(encoder_ref).items()
    }
    keras_sam.load_official_weights(encoder, state)
    variables = keras_variables(encoder)
    np.testing.assert_array_equal(
        np.array(variables["no_mask_embed/embeddings"]),
        state["no_mask_embed.weight"].float().numpy(),
    )


def test_a_value_that_is_not_an_array_is_rejected():
    encoder, encoder_ref = small_encoder()
    state = state_dict_of(encoder_ref)
    state["no_mask_embed.weight"] = state["no_mask_embed.weight"].tolist()
    before = weights_of(encoder)
    with pytest.raises(ValueError, match="`state_dict`.*no_mask_embed.weight"):
        keras_sam.load_official_weights(encoder, state)
    assert_weights_equal(weights_of(encoder), before)


# -- (d) mismatches: listed, and nothing loaded --------------------------------

# Keys late in the table, so a loader that assigned row by row would already
# have changed most variables when it met them.
LAST_DECODER_KEY = "iou_prediction_head.layers.2.weight"
LAST_ENCODER_KEY = "mask_downscaling.6.weight"


def _missing(state):
    del state[LAST_DECODER_KEY]
    return [LAST_DECODER_KEY]


def _missing_two(state):
    del state[LAST_DECODER_KEY]
    del state["transformer.layers.0.self_attn.q_proj.bias"]
    return [LAST_DECODER_KEY, "transformer.layers.0.self_attn.q_proj.bias"]


def _unexpected(state):
    state["output_hypernetworks_mlps.4.layers.0.weight"] = torch.zeros(16, 16)
    return ["output_hypernetworks_mlps.4.layers.0.weight"]


def _wrong_shape(state):
    out_dim, in_dim = state[LAST_DECODER_KEY].shape
    state[LAST_DECODER_KEY] = torch.zeros(out_dim - 1, in_dim)
    return [LAST_DECODER_KEY]


def _wrong_shape_conv(state):
    key = "output_upscaling.3.weight"
    state[key] = state[key].transpose(0, 1).contiguous()  # (out, in) swapped
    return [key]


MISMATCHES = {
    "missing": _missing,
    "missing_two": _missing_two,
    "unexpected": _unexpected,
    "wrong_shape": _wrong_shape,
    "wrong_shape_conv": _wrong_shape_conv,
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_decoder_mismatch_is_listed_and_nothing_loads(case):
    decoder, decoder_ref = small_decoder()
    state = state_dict_of(decoder_ref)
    offending = MISMATCHES[case](state)
    before = weights_of(decoder)
    with pytest.raises(ValueError, match="`state_dict`") as info:
        keras_sam.load_official_weights(decoder, state)
    for key in offending:
        assert key in str(info.value)
    assert_weights_equal(weights_of(decoder), before)


def test_vit_b_wrong_shape_is_listed_and_nothing_loads():
    ours_kwargs, ref_kwargs = VIT_B_DECODER
    decoder = SAMMaskDecoder(**ours_kwargs)
    state = state_dict_of(official.make_mask_decoder(**ref_kwargs))
    key = "iou_prediction_head.layers.1.weight"
    assert tuple(state[key].shape) == (256, 256)
    state[key] = torch.zeros(255, 256)
    before = weights_of(decoder)
    with pytest.raises(ValueError, match=key) as info:
        keras_sam.load_official_weights(decoder, state)
    assert "(256, 255)" in str(info.value)
    assert_weights_equal(weights_of(decoder), before)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda s: s.pop(LAST_ENCODER_KEY), LAST_ENCODER_KEY),
        (
            lambda s: s.pop("pe_layer.positional_encoding_gaussian_matrix"),
            "pe_layer.positional_encoding_gaussian_matrix",
        ),
        (
            lambda s: s.__setitem__("point_embeddings.4.weight", torch.ones(1)),
            "point_embeddings.4.weight",
        ),
        (
            lambda s: s.__setitem__(LAST_ENCODER_KEY, torch.zeros(16, 8, 1, 2)),
            LAST_ENCODER_KEY,
        ),
    ],
    ids=["missing", "missing_buffer", "unexpected", "wrong_shape"],
)
def test_encoder_mismatch_is_listed_and_nothing_loads(mutate, key):
    encoder, encoder_ref = small_encoder()
    state = state_dict_of(encoder_ref)
    mutate(state)
    before = weights_of(encoder)
    with pytest.raises(ValueError, match="`state_dict`") as info:
        keras_sam.load_official_weights(encoder, state)
    assert key in str(info.value)
    assert_weights_equal(weights_of(encoder), before)


@pytest.mark.parametrize(
    "ref_depth, ours_layers, listed",
    [
        (3, 2, "unexpected keys"),  # an extra transformer block
        (2, 3, "missing keys"),  # a block short
    ],
)
def test_wrong_architecture_is_listed_and_nothing_loads(
    ref_depth, ours_layers, listed
):
    ours_kwargs, _ = SMALL_DECODER
    decoder = SAMMaskDecoder(**{**ours_kwargs, "num_layers": ours_layers})
    _, decoder_ref = small_decoder(depth=ref_depth)
    before = weights_of(decoder)
    with pytest.raises(ValueError, match=listed) as info:
        keras_sam.load_official_weights(decoder, state_dict_of(decoder_ref))
    message = str(info.value)
    for suffix in (
        "self_attn.q_proj.weight",
        "norm4.bias",
        "cross_attn_image_to_token.out_proj.bias",
    ):
        assert f"transformer.layers.2.{suffix}" in message
    assert "transformer.layers.1." not in message
    assert_weights_equal(weights_of(decoder), before)


def test_wrong_multimask_outputs_is_listed():
    ours_kwargs, _ = SMALL_DECODER
    decoder = SAMMaskDecoder(**{**ours_kwargs, "num_multimask_outputs": 2})
    _, decoder_ref = small_decoder()
    before = weights_of(decoder)
    with pytest.raises(ValueError, match="mask_tokens.weight") as info:
        keras_sam.load_official_weights(decoder, state_dict_of(decoder_ref))
    assert "output_hypernetworks_mlps.3.layers.0.weight" in str(info.value)
    assert_weights_equal(weights_of(decoder), before)


# -- (e) bad arguments ---------------------------------------------------------


@pytest.mark.parametrize(
    "make_target",
    [
        lambda: keras.layers.Dense(4),
        lambda: keras.Sequential([keras.layers.Dense(4)]),
        lambda: object(),
    ],
    ids=["dense", "sequential", "object"],
)
def test_non_sam_target_is_rejected(make_target):
    _, encoder_ref = small_encoder()
    with pytest.raises(ValueError, match="`target`"):
        keras_sam.load_official_weights(
            make_target(), state_dict_of(encoder_ref)
        )


@pytest.mark.parametrize(
    "make_state",
    [
        lambda ref: list(ref.state_dict().items()),
        lambda ref: list(ref.state_dict().values()),
        lambda ref: None,
        lambda ref: "model.pth",
    ],
    ids=["pairs", "values", "none", "path"],
)
def test_non_mapping_state_dict_is_rejected(make_state):
    encoder, encoder_ref = small_encoder()
    before = weights_of(encoder)
    with pytest.raises(ValueError, match="`state_dict`"):
        keras_sam.load_official_weights(encoder, make_state(encoder_ref))
    assert_weights_equal(weights_of(encoder), before)


# -- (f) ViT-B: every key used once, every variable assigned ---------------


@pytest.mark.parametrize("kind", ["prompt_encoder", "mask_decoder"])
def test_vit_b_every_key_used_once_every_variable_assigned(kind):
    if kind == "prompt_encoder":
        ours_kwargs, ref_kwargs = VIT_B_ENCODER
        layer = SAMPromptEncoder(**ours_kwargs)
        state = state_dict_of(official.make_prompt_encoder(**ref_kwargs))
        table = torch_mapping.prompt_encoder_table(layer)
    else:
        ours_kwargs, ref_kwargs = VIT_B_DECODER
        layer = SAMMaskDecoder(**ours_kwargs)
        state = state_dict_of(official.make_mask_decoder(**ref_kwargs))
        table = torch_mapping.mask_decoder_table(layer)
    layer.build()
    variables = keras_variables(layer)

    torch_uses = collections.Counter(row.torch_key for row in table)
    keras_uses = collections.Counter(row.keras_path for row in table)
    assert torch_uses == collections.Counter(list(state)), (
        "torch keys used != once"
    )
    assert keras_uses == collections.Counter(list(variables)), (
        "variables != once"
    )

    keras_sam.load_official_weights(layer, state)
    for row in table:
        expected = torch_mapping.TRANSFORMS[row.transform](
            official.to_numpy(state[row.torch_key])
        )
        np.testing.assert_array_equal(
            np.array(variables[row.keras_path]),
            expected,
            err_msg=row.keras_path,
        )


def test_vit_b_named_variables_hold_the_transformed_arrays():
    """A few variables against layouts written out here, not via the table."""
    encoder = SAMPromptEncoder()
    encoder_state = state_dict_of(official.make_prompt_encoder())
    keras_sam.load_official_weights(encoder, encoder_state)
    decoder = SAMMaskDecoder(**VIT_B_DECODER[0])
    decoder_state = state_dict_of(official.make_mask_decoder())
    keras_sam.load_official_weights(decoder, decoder_state)

    def source(state, key):
        return official.to_numpy(state[key])

    def ours(layer, path):
        return np.array(keras_variables(layer)[path])

    pairs = [
        (
            ours(
                encoder,
                "positional_embedding_layer/positional_encoding_gaussian_matrix",
            ),
            source(
                encoder_state, "pe_layer.positional_encoding_gaussian_matrix"
            ),
        ),
        (
            ours(encoder, "top_left_corner_embed/embeddings"),
            source(encoder_state, "point_embeddings.2.weight"),
        ),
        (
            ours(encoder, "mask_downscaler/conv_1/kernel"),
            np.transpose(
                source(encoder_state, "mask_downscaling.3.weight"), (2, 3, 1, 0)
            ),
        ),
        (
            ours(encoder, "mask_downscaler/norm_0/gamma"),
            source(encoder_state, "mask_downscaling.1.weight"),
        ),
        (
            ours(
                decoder, "transformer/layer_1/self_attention/query_proj/kernel"
            ),
            source(
                decoder_state, "transformer.layers.1.self_attn.q_proj.weight"
            ).T,
        ),
        (
            ours(
                decoder,
                "transformer/layer_0/cross_attention_image_to_token/"
                "out_proj/bias",
            ),
            source(
                decoder_state,
                "transformer.layers.0.cross_attn_image_to_token.out_proj.bias",
            ),
        ),
        (
            ours(decoder, "output_upscaling/deconv_0/kernel"),
            np.transpose(
                source(decoder_state, "output_upscaling.0.weight"), (2, 3, 1, 0)
            ),
        ),
        (
            ours(decoder, "output_hypernetworks_mlp_3/layer_2/kernel"),
            source(
                decoder_state, "output_hypernetworks_mlps.3.layers.2.weight"
            ).T,
        ),
        (
            ours(decoder, "mask_tokens/embeddings"),
            source(decoder_state, "mask_tokens.weight"),
        ),
    ]
    for got, expected in pairs:
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
