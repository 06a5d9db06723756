"""The predictor and the automatic mask generator at the edges: extreme
aspect ratios, empty batches, bad booleans, non-finite embeddings, masks
streamed in chunks, crops of pictures of a few pixels, progress and the
counts of what each threshold removed (issue 23)."""

import math
import time

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_sam.inference import amg_utils
from keras_sam.inference.automatic_mask_generator import MAX_CROP_LAYERS
from keras_sam.inference.automatic_mask_generator import REMOVAL_STEPS
from keras_sam.inference.automatic_mask_generator import (
    SAMAutomaticMaskGenerator,
)
from keras_sam.inference.predictor import SAMPredictor
from keras_sam.models.sam import SAM
from keras_sam.training.datasets.shapes import make_scene
from keras_sam.training.evaluation import EVALUATION_SEED
from support.fixtures import DECODER
from support.fixtures import ENCODER
from support.fixtures import PROMPT
from support.fixtures import smooth_image
from tests import helpers

# Hypothesis runs many examples in one test, sharing its fixtures: the
# module-scoped model and predictor are meant to be shared, and the autouse
# Keras session reset runs once per test, not per example.
SHARED = [HealthCheck.function_scoped_fixture]
FEW = settings(max_examples=12, deadline=None, suppress_health_check=SHARED)


@pytest.fixture(scope="module")
def model():
    """The tiny model: a 256-pixel input."""
    return SAM.from_config_dicts(ENCODER, PROMPT, DECODER)


@pytest.fixture(scope="module")
def predictor(model):
    predictor = SAMPredictor(model)
    predictor.set_image(smooth_image((48, 64, 3)))
    return predictor


def _official_input_size(size, long_side):
    """`ResizeLongestSide.get_preprocess_shape`, written out again."""
    scale = long_side * 1.0 / max(size)
    return tuple(int(v * scale + 0.5) for v in size)


# -- aspect ratios -----------------------------------------------------------


def test_aspect_ratio_1_to_1000_on_a_1024_input():
    # A 1024-pixel input (patches of 64 keep the encoder tiny) resizes the
    # short side of 1:1000 to 1 pixel.
    encoder = dict(ENCODER, image_shape=(1024, 1024, 3), patch_size=64)
    prompt = dict(PROMPT, input_image_size=(1024, 1024))
    predictor = SAMPredictor(SAM.from_config_dicts(encoder, prompt, DECODER))
    for shape in [(1, 1000), (1000, 1), (2, 1999)]:
        predictor.set_image(np.full(shape + (3,), 120, np.uint8))
        assert predictor.input_size == _official_input_size(shape, 1024)
        h, w = shape
        masks, scores, low = predictor.predict(box=[0, 0, w, h])
        assert masks.shape == (3, h, w) and masks.dtype == bool
        assert scores.shape == (3,)
        assert low.shape == (3,) + predictor.mask_input_size


@FEW
@given(
    short=st.integers(1, 3),
    delta=st.integers(-3, 3),
    transpose=st.booleans(),
)
def test_aspect_ratios_near_the_limit(model, short, delta, transpose):
    # 256-pixel input: the short side rounds to 1 pixel up to 512:1.
    predictor = SAMPredictor(model)
    shape = (short, short * 512 + delta)
    shape = shape[::-1] if transpose else shape
    image = np.full(shape + (3,), 90, np.uint8)
    if min(_official_input_size(shape, 256)) < 1:
        with pytest.raises(ValueError, match=r"image\.shape"):
            predictor.set_image(image)
        assert not predictor.is_image_set
        with pytest.raises(ValueError, match="original_size"):
            predictor.set_image_embedding(
                np.zeros((1, 16, 16, 32), np.float32), shape
            )
        return
    predictor.set_image(image)
    masks, _, _ = predictor.predict(box=[0, 0, shape[1], shape[0]])
    assert masks.shape == (3,) + shape


def test_elongated_image_message(model):
    predictor = SAMPredictor(model)
    predictor.set_image(np.zeros((1, 512, 3), np.uint8))  # rounds to 1
    with pytest.raises(ValueError, match=r"elongated.*\(1, 513, 3\)"):
        predictor.set_image(np.zeros((1, 513, 3), np.uint8))
    generator = SAMAutomaticMaskGenerator(model, points_per_side=1)
    with pytest.raises(ValueError, match=r"elongated.*\(513, 1, 3\)"):
        generator.generate(np.zeros((513, 1, 3), np.uint8))


# -- empty batches -----------------------------------------------------------


# The decoder's low-resolution masks: four times the image embedding.
LOW_RES = tuple(4 * side for side in PROMPT["image_embedding_size"])
EMPTY_BATCHES = {
    "boxes": dict(boxes=np.zeros((0, 4))),
    "points": dict(
        point_coords=np.zeros((0, 2, 2)), point_labels=np.zeros((0, 2))
    ),
    "masks": dict(mask_input=np.zeros((0, *LOW_RES), np.float32)),
}


@pytest.mark.parametrize("prompt", list(EMPTY_BATCHES))
def test_empty_batch(predictor, prompt):
    empty = EMPTY_BATCHES[prompt]
    one = {k: np.zeros((1,) + v.shape[1:], v.dtype) for k, v in empty.items()}
    if "boxes" in one:
        one["boxes"] = np.array([[2.0, 3.0, 20.0, 30.0]])
    for multimask_output in (True, False):
        for return_logits in (True, False):
            flags = dict(
                multimask_output=multimask_output, return_logits=return_logits
            )
            expected = predictor.predict_batch(**one, **flags)
            out = predictor.predict_batch(**empty, **flags)
            for got, ref in zip(out, expected, strict=True):
                assert got.shape == (0,) + ref.shape[1:]
                assert got.dtype == ref.dtype
            assert list(predictor.predict_batch_iter(**empty, **flags)) == []
        low, scores = predictor.predict_low_res(
            **empty, multimask_output=multimask_output
        )
        assert low.shape == (0,) + expected[2].shape[1:]
        assert scores.shape == (0,) + expected[1].shape[1:]


# -- booleans ----------------------------------------------------------------


NOT_BOOLS = st.one_of(
    st.none(),
    st.integers(-2, 2),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.lists(st.booleans(), min_size=0, max_size=3).map(np.array),
    st.booleans().map(np.array),  # 0-d arrays: not NumPy bool scalars
    st.lists(st.booleans(), max_size=2),
)


@settings(max_examples=40, deadline=None, suppress_health_check=SHARED)
@given(value=NOT_BOOLS)
def test_bad_booleans_are_refused(predictor, value):
    box = dict(box=[2.0, 3.0, 20.0, 30.0])
    boxes = dict(boxes=[[2.0, 3.0, 20.0, 30.0]])
    calls = [
        ("multimask_output", predictor.predict, box),
        ("return_logits", predictor.predict, box),
        ("multimask_output", predictor.predict_batch, boxes),
        ("return_logits", predictor.predict_batch, boxes),
        ("multimask_output", predictor.predict_low_res, boxes),
        ("multimask_output", predictor.predict_batch_iter, boxes),
        ("return_logits", predictor.predict_batch_iter, boxes),
    ]
    for name, method, prompt in calls:
        with pytest.raises(ValueError, match=name):
            method(**prompt, **{name: value})
    with pytest.raises(ValueError, match="use_stability_fallback"):
        SAMPredictor(predictor.model, use_stability_fallback=value)


def test_python_and_numpy_booleans_are_accepted(predictor):
    for value in (True, False, np.True_, np.False_):
        masks, scores, _ = predictor.predict(
            box=[2.0, 3.0, 20.0, 30.0],
            multimask_output=value,
            return_logits=value,
        )
        assert masks.shape[0] == (3 if value else 1) == scores.shape[0]
        assert masks.dtype == (np.float32 if value else bool)


# -- non-finite embeddings ---------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embedding_is_refused(predictor, bad):
    fresh = SAMPredictor(predictor.model)
    embedding = predictor.get_image_embedding().copy()
    embedding[0, 3, 4, 5] = bad
    with pytest.raises(ValueError, match="`embedding` must be finite"):
        fresh.set_image_embedding(embedding, (48, 64))
    assert not fresh.is_image_set


def test_image_encoder_giving_nan_is_refused(predictor):
    broken = SAMPredictor(predictor.model)
    broken.set_image_embedding(predictor.get_image_embedding(), (48, 64))
    weight = predictor.model.image_encoder.weights[0]
    saved = keras.ops.convert_to_numpy(weight)
    weight.assign(np.full(weight.shape, np.nan, np.float32))
    try:
        with pytest.raises(ValueError, match="non-finite embedding"):
            broken.set_image(smooth_image((48, 64, 3)))
    finally:
        weight.assign(saved)
    # The previous image is gone: no prediction from a stale embedding.
    assert not broken.is_image_set


# -- streaming ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_chunks(predictor):
    """A predictor decoding at most 4 prompts at once: batches of 1, 2 and 4
    only, so that the test traces the decoder for few shapes."""
    small = SAMPredictor(predictor.model, decode_chunk_size=4)
    small.set_image_embedding(predictor.get_image_embedding(), (48, 64))
    return small


def _prompts(kind, n, rng):
    if kind == "boxes":
        xy = rng.uniform(0, 30, (n, 2))
        return dict(boxes=np.concatenate([xy, xy + 15], axis=1))
    return dict(
        point_coords=rng.uniform(0, 47, (n, 1, 2)),
        point_labels=rng.integers(0, 2, (n, 1)),
    )


@settings(max_examples=8, deadline=None, suppress_health_check=SHARED)
@given(
    n=st.integers(0, 9),
    chunk_size=st.integers(1, 10),
    kind=st.sampled_from(["boxes", "points"]),
    multimask_output=st.booleans(),
)
def test_streamed_chunks_equal_predict_batch(
    small_chunks, n, chunk_size, kind, multimask_output
):
    predictor = small_chunks
    prompts = _prompts(kind, n, np.random.default_rng(n))
    kwargs = dict(prompts, multimask_output=multimask_output)
    masks, scores, low = predictor.predict_batch(**kwargs)
    logits, _, _ = predictor.predict_batch(**kwargs, return_logits=True)
    chunks = list(predictor.predict_batch_iter(**kwargs, chunk_size=chunk_size))
    sizes = [len(c[0]) for c in chunks]
    assert sizes == [min(chunk_size, n - s) for s in range(0, n, chunk_size)]
    if not n:
        return
    got_masks, got_scores, got_low = (
        np.concatenate(p) for p in zip(*chunks, strict=True)
    )
    # Other batch sizes run other traces of the decoder: float32 rounding.
    helpers.assert_close(got_low, low, helpers.SAME_BACKEND_RTOL)
    helpers.assert_close(got_scores, scores, helpers.SAME_BACKEND_RTOL)
    assert got_masks.shape == masks.shape
    sure = np.abs(logits) > helpers.MASK_LOGIT_MARGIN
    np.testing.assert_array_equal(got_masks[sure], masks[sure])


def test_streaming_checks_everything_before_the_first_chunk(predictor):
    boxes = np.array([[2.0, 3.0, 20.0, 30.0]] * 3 + [[2.0, 3.0, 1.0, 30.0]])
    with pytest.raises(ValueError, match="box"):
        predictor.predict_batch_iter(boxes=boxes, chunk_size=1)
    for bad in (0, 1.5, True, "4"):
        with pytest.raises(ValueError, match="chunk_size"):
            predictor.predict_batch_iter(boxes=boxes[:3], chunk_size=bad)


# -- crops of small pictures -------------------------------------------------


def test_crop_layer_on_a_one_pixel_image(model):
    generator = SAMAutomaticMaskGenerator(
        model,
        points_per_side=2,
        crop_n_layers=1,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    records = generator.generate(np.full((1, 1, 3), 200, np.uint8))
    for record in records:
        assert record["segmentation"].shape == (1, 1)
    # Layer 1 of a 1x1 picture: four 1x1 crops, three of them outside.
    assert generator.last_stats["crops"] == 2
    assert generator.last_stats["crops_skipped"] == 3


@settings(max_examples=6, deadline=None, suppress_health_check=SHARED)
@given(
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    layers=st.integers(1, 2),
)
def test_crop_layers_on_tiny_images(model, h, w, layers):
    generator = SAMAutomaticMaskGenerator(
        model,
        points_per_side=1,
        crop_n_layers=layers,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    records = generator.generate(smooth_image((h, w, 3)))
    boxes, _ = amg_utils.generate_crop_boxes((h, w), layers, 512 / 1500)
    usable = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    stats = generator.last_stats
    assert stats["crops"] == len(usable)
    assert stats["crops"] + stats["crops_skipped"] == len(boxes)
    for record in records:
        assert record["segmentation"].shape == (h, w)


def test_too_many_crop_layers_are_refused_at_once(model):
    start = time.perf_counter()
    for layers in (40, MAX_CROP_LAYERS + 1, 10**9):
        with pytest.raises(ValueError, match="crop_n_layers"):
            SAMAutomaticMaskGenerator(model, crop_n_layers=layers)
    assert time.perf_counter() - start < 1.0
    generator = SAMAutomaticMaskGenerator(model, crop_n_layers=MAX_CROP_LAYERS)
    assert len(generator.point_grids) == MAX_CROP_LAYERS + 1


# -- progress and statistics -------------------------------------------------


def test_progress_callback_counts_point_batches(model, capsys):
    calls = []
    generator = SAMAutomaticMaskGenerator(
        model,
        points_per_side=3,
        points_per_batch=4,
        crop_n_layers=1,
        progress=lambda done, total: calls.append((done, total)),
    )
    generator.generate(smooth_image((24, 32, 3)))
    # Five crops (the picture and layer 1's four), 9 points in 3 batches.
    total = 5 * math.ceil(9 / 4)
    assert calls == [(done, total) for done in range(total + 1)]
    assert capsys.readouterr().err == ""

    generator.progress = True
    generator.generate(smooth_image((24, 32, 3)))
    assert f"point batch {total}/{total} (crop 5/5)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="progress"):
        SAMAutomaticMaskGenerator(model, progress="yes")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),  # the official thresholds: few or no masks of a tiny model
        dict(pred_iou_thresh=0.0, stability_score_thresh=0.0),
        dict(stability_score_thresh=0.5, crop_n_layers=1),
    ],
)
def test_last_stats_add_up(model, kwargs):
    generator = SAMAutomaticMaskGenerator(
        model, points_per_side=3, points_per_batch=5, **kwargs
    )
    assert generator.last_stats is None
    records = generator.generate(smooth_image((40, 56, 3)))
    stats = generator.last_stats
    assert set(stats["removed"]) == set(REMOVAL_STEPS)
    assert stats["kept"] == len(records)
    assert stats["points"] == 9 * stats["crops"]
    assert stats["masks"] == 3 * stats["points"]
    assert stats["masks"] == stats["kept"] + sum(stats["removed"].values())
    assert all(v >= 0 for v in stats["removed"].values())
    # A failed run leaves no stale counts.
    with pytest.raises(ValueError, match="image"):
        generator.generate(np.zeros((4, 4), np.uint8))
    assert generator.last_stats is None


def test_last_stats_pred_iou_count(model):
    # Only the predicted-IoU filter: its count, from the decoder's scores.
    image = smooth_image((40, 56, 3))
    predictor = SAMPredictor(model)
    predictor.set_image(image)
    points = amg_utils.build_point_grid(3) * np.array([[56, 40]])
    _, iou_preds = predictor.predict_low_res(points[:, None], np.ones((9, 1)))
    # A threshold <= 0 turns the filter off: take one among the positives.
    thresh = float(np.median(iou_preds[iou_preds > 0]))
    generator = SAMAutomaticMaskGenerator(
        model,
        points_per_side=3,
        pred_iou_thresh=thresh,
        stability_score_thresh=0.0,
    )
    generator.generate(image)
    removed = generator.last_stats["removed"]
    assert removed["pred_iou_thresh"] == np.sum(iou_preds <= np.float32(thresh))


@pytest.mark.integration  # the counting is NumPy's; compiles 5 crop sizes
def test_last_stats_count_every_step():
    # The bundled model on a held-out shapes scene, with settings under
    # which every step removes some masks.
    model = SAM.from_preset("sam_shapes", weights=True)
    image, _ = make_scene((EVALUATION_SEED, 0, 0, 1))
    generator = SAMAutomaticMaskGenerator(
        model,
        points_per_side=4,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.8,
        crop_n_layers=1,
        min_mask_region_area=30,
    )
    records = generator.generate(image)
    stats = generator.last_stats
    assert stats["kept"] == len(records) > 0
    assert stats["masks"] == 3 * 4**2 * stats["crops"]
    assert stats["crops"] == 5
    assert stats["masks"] == stats["kept"] + sum(stats["removed"].values())
    assert all(count > 0 for count in stats["removed"].values()), stats
