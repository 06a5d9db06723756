"""SAMMaskDecoder: Keras conventions, parity with the official decoder."""

import numpy as np
import pytest
import torch

import keras_sam
from keras_sam.layers import SAMMaskDecoder
from support.reference import official
from tests import helpers

# name: (ours kwargs, official kwargs, embedding (H, W))
CONFIGS = {
    "vit_b": (
        dict(hidden_size=256, num_layers=2, intermediate_dim=2048, num_heads=8),
        dict(),
        (64, 64),
    ),
    "small_non_default": (
        dict(
            hidden_size=64,
            num_layers=3,
            intermediate_dim=96,
            num_heads=4,
            embedding_dim=64,
            num_multimask_outputs=2,
            iou_head_depth=2,
            iou_head_hidden_dim=48,
        ),
        dict(
            transformer_dim=64,
            depth=3,
            mlp_dim=96,
            num_heads=4,
            num_multimask_outputs=2,
            iou_head_depth=2,
            iou_head_hidden_dim=48,
        ),
        (6, 10),
    ),
}


def make_pair(config_name, seed=0):
    ours_kwargs, ref_kwargs, _ = CONFIGS[config_name]
    ref = official.make_mask_decoder(**ref_kwargs, seed=seed)
    ours = SAMMaskDecoder(**ours_kwargs)
    keras_sam.load_official_weights(ours, ref.state_dict())
    return ours, ref


def random_inputs(config_name, batch, num_tokens, image_batch=1, seed=0):
    """Channels-last decoder inputs."""
    ours_kwargs, _, (h, w) = CONFIGS[config_name]
    c = ours_kwargs["hidden_size"]
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.normal(0, 1, shape).astype("float32")

    return dict(
        image_embeddings=normal(image_batch, h, w, c),
        prompt_dense_positional_embeddings=normal(1, h, w, c),
        prompt_sparse_embeddings=normal(batch, num_tokens, c),
        prompt_dense_embeddings=normal(batch, h, w, c),
    )


def official_predict(ref, inputs):
    """All masks and IoUs of the official decoder, channels-last."""
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        masks, iou = ref.predict_masks(
            image_embeddings=t["image_embeddings"].permute(0, 3, 1, 2),
            image_pe=t["prompt_dense_positional_embeddings"].permute(
                0, 3, 1, 2
            ),
            sparse_prompt_embeddings=t["prompt_sparse_embeddings"],
            dense_prompt_embeddings=t["prompt_dense_embeddings"].permute(
                0, 3, 1, 2
            ),
        )
    return official.to_numpy(masks), official.to_numpy(iou)


@pytest.mark.parity
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("batch,num_tokens", [(1, 2), (3, 4), (2, 0)])
def test_matches_official(config_name, batch, num_tokens):
    ours, ref = make_pair(config_name)
    inputs = random_inputs(config_name, batch, num_tokens)
    ref_masks, ref_iou = official_predict(ref, inputs)
    out = ours(**inputs)
    rtol = helpers.DECODER_RTOL
    helpers.assert_close(out["masks"], ref_masks, rtol, "masks")
    helpers.assert_close(out["iou_pred"], ref_iou, rtol, "iou_pred")


@pytest.mark.parity
@pytest.mark.parametrize("multimask_output", [True, False])
def test_output_selection_matches_official_forward(multimask_output):
    """Index 0 is the single-mask output, 1: the multimask outputs."""
    ours, ref = make_pair("small_non_default")
    inputs = random_inputs("small_non_default", 2, 3)
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        masks, iou = ref(
            image_embeddings=t["image_embeddings"].permute(0, 3, 1, 2),
            image_pe=t["prompt_dense_positional_embeddings"].permute(
                0, 3, 1, 2
            ),
            sparse_prompt_embeddings=t["prompt_sparse_embeddings"],
            dense_prompt_embeddings=t["prompt_dense_embeddings"].permute(
                0, 3, 1, 2
            ),
            multimask_output=multimask_output,
        )
    out = ours(**inputs)
    pick = slice(1, None) if multimask_output else slice(0, 1)
    rtol = helpers.DECODER_RTOL
    helpers.assert_close(
        helpers.to_numpy(out["masks"])[:, pick], official.to_numpy(masks), rtol
    )
    helpers.assert_close(
        helpers.to_numpy(out["iou_pred"])[:, pick], official.to_numpy(iou), rtol
    )


@pytest.mark.parity
def test_image_batch_broadcasts_like_a_repeat():
    ours, _ = make_pair("small_non_default")
    inputs = random_inputs("small_non_default", 3, 2)
    shared = ours(**inputs)
    repeated = dict(inputs)
    repeated["image_embeddings"] = np.repeat(inputs["image_embeddings"], 3, 0)
    full = ours(**repeated)
    for key in ("masks", "iou_pred"):
        helpers.assert_close(
            shared[key], helpers.to_numpy(full[key]), helpers.SAME_BACKEND_RTOL
        )


@pytest.mark.parity
@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize(
    "prompt", ["point", "points_padded", "box", "box_point", "mask"]
)
def test_end_to_end_with_prompt_encoder(prompt, multimask_output):
    """Prompt encoder + decoder against official PromptEncoder + MaskDecoder."""
    from tests.layers import test_prompt_encoder as tpe

    encoder, ref_encoder = tpe.make_pair("small_non_square", seed=3)
    ours_kwargs, ref_kwargs, _ = CONFIGS["small_non_default"]
    ours_kwargs = dict(ours_kwargs, hidden_size=48, embedding_dim=48)
    ref_kwargs = dict(ref_kwargs, transformer_dim=48)
    ref = official.make_mask_decoder(**ref_kwargs, seed=4)
    ours = SAMMaskDecoder(**ours_kwargs)
    keras_sam.load_official_weights(ours, ref.state_dict())

    num_points, num_boxes, with_mask = {
        "point": (1, 0, False),
        "points_padded": (3, 0, False),
        "box": (0, 1, False),
        "box_point": (1, 1, False),
        "mask": (1, 0, True),
    }[prompt]
    prompts = tpe.random_prompts(
        encoder, 2, num_points, num_boxes, with_mask, seed=5
    )
    sparse, dense, pe = tpe.official_call(ref_encoder, prompts, pad=True)
    rng = np.random.default_rng(6)
    image = rng.normal(0, 1, (1, 6, 10, 48)).astype("float32")
    ref_masks, ref_iou = official_predict(
        ref,
        dict(
            image_embeddings=image,
            prompt_dense_positional_embeddings=pe,
            prompt_sparse_embeddings=sparse,
            prompt_dense_embeddings=dense,
        ),
    )
    ours_prompts = prompts
    if num_points and not num_boxes:
        ours_prompts = tpe.with_padding_point(prompts)
    encoded = encoder(**ours_prompts)
    out = ours(image_embeddings=image, **encoded)
    pick = slice(1, None) if multimask_output else slice(0, 1)
    rtol = helpers.DECODER_RTOL
    helpers.assert_close(
        helpers.to_numpy(out["masks"])[:, pick], ref_masks[:, pick], rtol
    )
    helpers.assert_close(
        helpers.to_numpy(out["iou_pred"])[:, pick], ref_iou[:, pick], rtol
    )


def test_official_parameter_counts():
    ours = SAMMaskDecoder(**CONFIGS["vit_b"][0])
    ours.build()
    ref = official.make_mask_decoder()
    ref_count = sum(p.numel() for p in ref.parameters())
    assert helpers.count_params(ours.trainable_weights) == ref_count == 4058340
    assert len(ours.trainable_weights) == 120 == len(list(ref.parameters()))


def test_keras_conventions(tmp_path):
    inputs = random_inputs("small_non_default", 2, 3, image_batch=2)
    # model.predict slices every input along one batch axis.
    pe = inputs["prompt_dense_positional_embeddings"]
    inputs["prompt_dense_positional_embeddings"] = np.repeat(pe, 2, axis=0)
    ref = official.make_mask_decoder(**CONFIGS["small_non_default"][1])
    helpers.run_layer_test(
        SAMMaskDecoder,
        CONFIGS["small_non_default"][0],
        inputs,
        expected_num_trainable_weights=len(list(ref.parameters())),
        tmp_path=tmp_path,
    )
