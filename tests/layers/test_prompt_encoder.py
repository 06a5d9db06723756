"""SAMPromptEncoder: Keras conventions, parity with the official encoder."""

import numpy as np
import pytest
import torch

import keras_sam
from keras_sam.layers import SAMPromptEncoder
from support.reference import official
from tests import helpers

# (ours, official) constructor arguments.
CONFIGS = {
    "vit_b": (
        dict(),
        dict(),
    ),
    "small_non_square": (
        dict(
            hidden_size=48,
            image_embedding_size=(6, 10),
            input_image_size=(96, 160),
            mask_in_channels=8,
        ),
        dict(
            embed_dim=48,
            image_embedding_size=(6, 10),
            input_image_size=(96, 160),
            mask_in_chans=8,
        ),
    ),
}


def make_pair(config_name: str, seed: int = 0):
    ours_kwargs, ref_kwargs = CONFIGS[config_name]
    ref = official.make_prompt_encoder(**ref_kwargs, seed=seed)
    ours = SAMPromptEncoder(**ours_kwargs)
    keras_sam.load_official_weights(ours, ref.state_dict())
    return ours, ref


def random_prompts(ours, batch, num_points, num_boxes, with_mask, seed=0):
    rng = np.random.default_rng(seed)
    h, w = ours.input_image_size
    out = {}
    if num_points:
        out["points"] = rng.uniform(0, [w, h], (batch, num_points, 2))
        out["labels"] = rng.integers(0, 2, (batch, num_points))
    if num_boxes:
        corner = rng.uniform(0, [w / 2, h / 2], (batch, num_boxes, 1, 2))
        size = rng.uniform(1, [w / 2, h / 2], (batch, num_boxes, 1, 2))
        out["boxes"] = np.concatenate([corner, corner + size], axis=2)
    if with_mask:
        mh, mw = ours.mask_input_size
        out["masks"] = rng.normal(0, 3, (batch, 1, mh, mw, 1))
    return {k: v.astype("float32") for k, v in out.items()}


def official_call(ref, prompts, pad: bool):
    points = None
    if "points" in prompts:
        points = (
            torch.from_numpy(prompts["points"]),
            torch.from_numpy(prompts["labels"]).float(),
        )
    boxes = prompts.get("boxes")
    if boxes is not None:
        boxes = torch.from_numpy(boxes.reshape(boxes.shape[0], -1))
    masks = prompts.get("masks")
    if masks is not None:
        masks = torch.from_numpy(masks[:, 0, :, :, 0][:, None])  # (B,1,h,w)
    with torch.no_grad():
        sparse, dense = ref(points=points, boxes=boxes, masks=masks)
        dense_pe = ref.get_dense_pe()
    del pad
    return (
        official.to_numpy(sparse),
        official.nchw_to_nhwc(official.to_numpy(dense)),
        official.nchw_to_nhwc(official.to_numpy(dense_pe)),
    )


def with_padding_point(prompts):
    """Append the (0, 0) label -1 point the official encoder adds."""
    prompts = dict(prompts)
    b = prompts["points"].shape[0]
    prompts["points"] = np.concatenate(
        [prompts["points"], np.zeros((b, 1, 2), "float32")], axis=1
    )
    prompts["labels"] = np.concatenate(
        [prompts["labels"], -np.ones((b, 1), prompts["labels"].dtype)], axis=1
    )
    return prompts


PROMPT_CASES = {
    # name: (num_points, num_boxes, with_mask)
    "points": (3, 0, False),
    "box": (0, 1, False),
    "points_box": (2, 1, False),
    "mask": (0, 0, True),
    "all": (2, 1, True),
}


@pytest.mark.parity
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_official(config_name, case, batch):
    ours, ref = make_pair(config_name)
    num_points, num_boxes, with_mask = PROMPT_CASES[case]
    prompts = random_prompts(ours, batch, num_points, num_boxes, with_mask)
    ref_sparse, ref_dense, ref_pe = official_call(ref, prompts, pad=True)
    # The official encoder pads points when no box is given; we don't.
    ours_prompts = prompts
    if num_points and not num_boxes:
        ours_prompts = with_padding_point(prompts)
    out = ours(**ours_prompts)
    rtol = helpers.PROMPT_ENCODER_RTOL
    if num_points or num_boxes:
        helpers.assert_close(
            out["prompt_sparse_embeddings"], ref_sparse, rtol, "sparse"
        )
    else:
        assert tuple(out["prompt_sparse_embeddings"].shape) == ref_sparse.shape
    helpers.assert_close(
        out["prompt_dense_embeddings"], ref_dense, rtol, "dense"
    )
    helpers.assert_close(
        out["prompt_dense_positional_embeddings"], ref_pe, rtol, "dense pe"
    )


@pytest.mark.parity
def test_labels_2_and_3_equal_the_box_embedding():
    """A box passed as two labelled points gives the box's tokens (ONNX)."""
    ours, ref = make_pair("small_non_square")
    prompts = random_prompts(ours, 2, 0, 1, False)
    box_tokens = ours(boxes=prompts["boxes"])["prompt_sparse_embeddings"]
    as_points = ours(
        points=prompts["boxes"].reshape(2, 2, 2),
        labels=np.array([[2, 3], [2, 3]]),
    )["prompt_sparse_embeddings"]
    helpers.assert_close(as_points, helpers.to_numpy(box_tokens), 0.0, "2/3")
    ref_sparse, _, _ = official_call(ref, prompts, pad=False)
    helpers.assert_close(as_points, ref_sparse, helpers.PROMPT_ENCODER_RTOL)


def test_padding_label_replaces_the_embedding():
    ours, _ = make_pair("small_non_square")
    out = ours(
        points=np.array([[[5.0, 7.0], [50.0, 70.0]]]),
        labels=np.array([[-1, -1]]),
    )["prompt_sparse_embeddings"]
    expected = helpers.to_numpy(ours.not_a_point_embed.embeddings)[0]
    np.testing.assert_array_equal(helpers.to_numpy(out)[0, 0], expected)
    np.testing.assert_array_equal(helpers.to_numpy(out)[0, 1], expected)


def test_no_prompt_gives_batch_one():
    ours = SAMPromptEncoder(
        hidden_size=16, image_embedding_size=(4, 4), input_image_size=(64, 64)
    )
    out = ours()
    assert tuple(out["prompt_sparse_embeddings"].shape) == (1, 0, 16)
    assert tuple(out["prompt_dense_embeddings"].shape) == (1, 4, 4, 16)


def test_multiple_masks_per_prompt_flatten_into_the_batch():
    ours = SAMPromptEncoder(
        hidden_size=16, image_embedding_size=(4, 4), input_image_size=(64, 64)
    )
    out = ours(masks=np.zeros((2, 3, 16, 16, 1), "float32"))
    assert tuple(out["prompt_dense_embeddings"].shape) == (6, 4, 4, 16)
    assert ours.compute_output_shape(masks_shape=(2, 3, 16, 16, 1))[
        "prompt_dense_embeddings"
    ] == (6, 4, 4, 16)


def test_official_parameter_counts():
    ours = SAMPromptEncoder()
    ours.build()
    ref = official.make_prompt_encoder()
    ref_trainable = sum(p.numel() for p in ref.parameters())
    ref_buffers = sum(b.numel() for b in ref.buffers())
    assert helpers.count_params(ours.trainable_weights) == ref_trainable == 6220
    assert helpers.count_params(ours.non_trainable_weights) == ref_buffers
    assert len(ours.trainable_weights) == 16
    assert len(ours.non_trainable_weights) == 1


def test_keras_conventions(tmp_path):
    ours, _ = make_pair("small_non_square")
    prompts = random_prompts(ours, 2, 2, 1, True)
    helpers.run_layer_test(
        SAMPromptEncoder,
        CONFIGS["small_non_square"][0],
        prompts,
        expected_num_trainable_weights=16,
        expected_num_non_trainable_weights=1,
        tmp_path=tmp_path,
    )


def test_dense_positional_shape_is_batch_one():
    ours = SAMPromptEncoder(
        hidden_size=16, image_embedding_size=(4, 4), input_image_size=(64, 64)
    )
    shape = ours.compute_output_shape(
        points_shape=(5, 2, 2), labels_shape=(5, 2)
    )
    assert shape["prompt_dense_positional_embeddings"] == (1, 4, 4, 16)
    assert shape["prompt_sparse_embeddings"] == (5, 2, 16)
