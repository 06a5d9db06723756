"""SAMMaskDecoder: every ValueError path."""

import re

import keras
import numpy as np
import pytest

from keras_sam.layers import SAMMaskDecoder

TINY = dict(
    hidden_size=16,
    num_layers=1,
    intermediate_dim=32,
    num_heads=2,
    embedding_dim=16,
    num_multimask_outputs=3,
    iou_head_depth=3,
    iou_head_hidden_dim=16,
)
C = 16
H = W = 4
IMAGE = "image_embeddings"
PE = "prompt_dense_positional_embeddings"
SPARSE = "prompt_sparse_embeddings"
DENSE = "prompt_dense_embeddings"
# Valid input shapes: prompt batch 2, 3 prompt tokens, shared image.
VALID = {
    IMAGE: (1, H, W, C),
    PE: (1, H, W, C),
    SPARSE: (2, 3, C),
    DENSE: (2, H, W, C),
}


def make_decoder() -> SAMMaskDecoder:
    return SAMMaskDecoder(**TINY)


def core_message(error: BaseException) -> str:
    """The layer's own message, without the argument list that Keras appends
    to errors raised in `call` (that list names every argument)."""
    text = str(error)
    found = re.search(r"\x1b\[1m(.*?)\x1b\[0m", text, re.S)
    return found.group(1) if found else text


# -- constructor ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(hidden_size=32), "hidden_size"),
        (dict(embedding_dim=32), "hidden_size"),
        (dict(hidden_size=12, embedding_dim=12), "embedding_dim"),
        (dict(hidden_size=20, embedding_dim=20), "embedding_dim"),
        # 16 heads divide hidden_size (self-attention) but not
        # hidden_size // 2 (the downsampled cross-attentions).
        (dict(num_heads=16), "num_heads"),
        (dict(num_heads=3), "num_heads"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(hidden_size=-16), "hidden_size"),
        (dict(num_layers=0), "num_layers"),
        (dict(num_layers=-1), "num_layers"),
        (dict(intermediate_dim=0), "intermediate_dim"),
        (dict(intermediate_dim=-32), "intermediate_dim"),
        (dict(num_heads=0), "num_heads"),
        (dict(num_heads=-2), "num_heads"),
        (dict(embedding_dim=0), "embedding_dim"),
        (dict(embedding_dim=-16), "embedding_dim"),
        (dict(num_multimask_outputs=-1), "num_multimask_outputs"),
        (dict(iou_head_depth=0), "iou_head_depth"),
        (dict(iou_head_depth=-3), "iou_head_depth"),
        (dict(iou_head_hidden_dim=0), "iou_head_hidden_dim"),
        (dict(iou_head_hidden_dim=-16), "iou_head_hidden_dim"),
    ],
)
def test_constructor_rejects(kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        SAMMaskDecoder(**{**TINY, **kwargs})


def test_constructor_accepts_zero_multimask_outputs():
    decoder = SAMMaskDecoder(**{**TINY, "num_multimask_outputs": 0})
    out = decoder(**{k: np.zeros(s, "float32") for k, s in VALID.items()})
    assert tuple(out["masks"].shape) == (2, 1, 4 * H, 4 * W)
    assert tuple(out["iou_pred"].shape) == (2, 1)


# -- call ------------------------------------------------------------------

# id: (changes to VALID shapes, argument to be named)
CALL_ERRORS = {
    # ranks
    "image_rank_3": ({IMAGE: (H, W, C)}, IMAGE),
    "image_rank_5": ({IMAGE: (1, 1, H, W, C)}, IMAGE),
    "pe_rank_3": ({PE: (H, W, C)}, PE),
    "pe_rank_5": ({PE: (1, 1, H, W, C)}, PE),
    "sparse_rank_2": ({SPARSE: (3, C)}, SPARSE),
    "sparse_rank_4": ({SPARSE: (2, 1, 3, C)}, SPARSE),
    "dense_rank_3": ({DENSE: (H, W, C)}, DENSE),
    "dense_rank_5": ({DENSE: (2, 1, H, W, C)}, DENSE),
    # channel width
    "image_width": ({IMAGE: (1, H, W, C + 8)}, IMAGE),
    "image_channels_first": ({IMAGE: (1, C, H, W)}, IMAGE),
    "pe_width": ({PE: (1, H, W, C // 2)}, PE),
    "sparse_width": ({SPARSE: (2, 3, C - 1)}, SPARSE),
    "dense_width": ({DENSE: (2, H, W, 2 * C)}, DENSE),
    # spatial size
    "pe_height": ({PE: (1, H + 1, W, C)}, PE),
    "pe_width_spatial": ({PE: (1, H, W - 1, C)}, PE),
    "dense_height": ({DENSE: (2, H * 2, W, C)}, DENSE),
    "dense_width_spatial": ({DENSE: (2, H, W + 2, C)}, DENSE),
    # batch sizes that cannot broadcast to the prompt batch 2
    "image_batch_3": ({IMAGE: (3, H, W, C)}, IMAGE),
    "pe_batch_3": ({PE: (3, H, W, C)}, PE),
    "dense_batch_3": ({DENSE: (3, H, W, C)}, DENSE),
    "dense_batch_1_sparse_batch_2_image_3": (
        {IMAGE: (3, H, W, C), DENSE: (1, H, W, C)},
        IMAGE,
    ),
}


def shapes_for(case: str) -> tuple[dict, str]:
    changes, arg = CALL_ERRORS[case]
    return {**VALID, **changes}, arg


@pytest.mark.parametrize("case", sorted(CALL_ERRORS))
def test_call_rejects(case):
    """Eagerly, on `keras.Input` tensors (the same static checks) and by
    `compute_output_shape`."""
    shapes, arg = shapes_for(case)
    decoder = make_decoder()
    with pytest.raises(ValueError, match=f"`{arg}`") as info:
        decoder(**{k: np.zeros(s, "float32") for k, s in shapes.items()})
    assert f"`{arg}`" in core_message(info.value), "eager"
    with pytest.raises(ValueError, match=f"`{arg}`") as info:
        decoder(**{k: keras.Input(batch_shape=s) for k, s in shapes.items()})
    assert f"`{arg}`" in core_message(info.value), "symbolic"
    with pytest.raises(ValueError, match=f"`{arg}`"):
        decoder.compute_output_shape(
            **{f"{k}_shape": s for k, s in shapes.items()}
        )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {IMAGE: (2, H, W, C)},
        {PE: (2, H, W, C)},
        {DENSE: (1, H, W, C)},
        {IMAGE: (2, H, W, C), PE: (2, H, W, C), DENSE: (1, H, W, C)},
    ],
    ids=["shared", "image_b", "pe_b", "dense_1", "all_b_dense_1"],
)
def test_call_accepts_broadcastable_batches(changes):
    shapes = {**VALID, **changes}
    decoder = make_decoder()
    out = decoder(**{k: np.zeros(s, "float32") for k, s in shapes.items()})
    expected = {"masks": (2, 4, 4 * H, 4 * W), "iou_pred": (2, 4)}
    declared = decoder.compute_output_shape(
        **{f"{k}_shape": s for k, s in shapes.items()}
    )
    for key, shape in expected.items():
        assert tuple(out[key].shape) == shape
        assert tuple(declared[key]) == shape
