"""SAMPredictor against the official SamPredictor, end to end."""

import numpy as np
import pytest
import torch

import keras_sam
from keras_sam.inference import device_upscale
from keras_sam.inference import predictor as predictor_module
from keras_sam.inference.predictor import SAMPredictor
from keras_sam.models.sam import SAM
from support.fixtures import DECODER
from support.fixtures import ENCODER
from support.fixtures import IMAGE_SHAPE
from support.fixtures import PROMPT
from support.fixtures import smooth_image
from support.reference import official
from tests import helpers


@pytest.fixture(scope="module")
def pair():
    ref_model = official.make_sam(
        ENCODER, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, seed=0
    )
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    keras_sam.load_official_weights(model, ref_model.state_dict())
    image = smooth_image()
    ref = official.SamPredictor(ref_model)
    official.set_image_without_torchvision(ref, image)
    ours = SAMPredictor(model)
    ours.set_image(image)
    return ours, ref, image


def test_image_embedding_matches_official(pair):
    ours, ref, _ = pair
    expected = official.nchw_to_nhwc(official.to_numpy(ref.features))
    helpers.assert_close(
        ours.get_image_embedding(), expected, helpers.IMAGE_ENCODER_RTOL
    )
    assert ours.input_size == tuple(ref.input_size)
    assert ours.original_size == tuple(ref.original_size)


PROMPTS = {
    "point": dict(point_coords=[[320.0, 200.0]], point_labels=[1]),
    "points": dict(
        point_coords=[[320.0, 200.0], [100.5, 400.0], [600.0, 50.0]],
        point_labels=[1, 0, 1],
    ),
    "box": dict(box=[120.0, 80.0, 500.0, 420.0]),
    "box_point": dict(
        point_coords=[[300.0, 260.0]],
        point_labels=[0],
        box=[120.0, 80.0, 500.0, 420.0],
    ),
}


def _compare(ours_out, ref_out, ref_logits_full):
    masks, scores, low_res = ours_out
    ref_masks, ref_scores, ref_low_res = ref_out
    helpers.assert_close(low_res, ref_low_res, helpers.PREDICTOR_RTOL, "low")
    helpers.assert_close(scores, ref_scores, helpers.PREDICTOR_RTOL, "scores")
    assert masks.shape == ref_masks.shape and masks.dtype == bool
    near_threshold = np.abs(ref_logits_full) < helpers.MASK_LOGIT_MARGIN
    differ = masks != ref_masks
    assert not np.any(differ & ~near_threshold), int(np.sum(differ))


@pytest.mark.parity
@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_predict_matches_official(pair, prompt, multimask_output):
    ours, ref, _ = pair
    kwargs = {k: np.asarray(v) for k, v in PROMPTS[prompt].items()}
    ref_out = ref.predict(**kwargs, multimask_output=multimask_output)
    ref_logits, _, _ = ref.predict(
        **kwargs, multimask_output=multimask_output, return_logits=True
    )
    out = ours.predict(**kwargs, multimask_output=multimask_output)
    _compare(out, ref_out, ref_logits)
    assert out[0].shape[1:] == IMAGE_SHAPE[:2]


@pytest.mark.parity
def test_mask_input_from_a_previous_prediction(pair):
    ours, ref, _ = pair
    kwargs = {k: np.asarray(v) for k, v in PROMPTS["point"].items()}
    _, ref_scores, ref_low = ref.predict(**kwargs)
    _, scores, low = ours.predict(**kwargs)
    best = int(np.argmax(ref_scores))
    assert best == int(np.argmax(scores))
    follow = dict(
        point_coords=np.array([[320.0, 200.0], [400.0, 300.0]]),
        point_labels=np.array([1, 1]),
        multimask_output=False,
    )
    ref_out = ref.predict(**follow, mask_input=ref_low[best : best + 1])
    ref_logits, _, _ = ref.predict(
        **follow, mask_input=ref_low[best : best + 1], return_logits=True
    )
    out = ours.predict(**follow, mask_input=low[best : best + 1])
    _compare(out, ref_out, ref_logits)


@pytest.mark.parity
def test_predict_batch_of_boxes_matches_official(pair):
    ours, ref, _ = pair
    boxes = np.array(
        [
            [120.0, 80.0, 500.0, 420.0],
            [10.0, 20.0, 200.0, 150.0],
            [300.0, 300.0, 639.0, 479.0],
        ]
    )
    boxes_torch = ref.transform.apply_boxes_torch(
        torch.as_tensor(boxes, dtype=torch.float), ref.original_size
    )
    with torch.no_grad():
        ref_logits, ref_scores, ref_low = ref.predict_torch(
            None, None, boxes_torch, multimask_output=True, return_logits=True
        )
    masks, scores, low = ours.predict_batch(boxes=boxes)
    helpers.assert_close(
        low, official.to_numpy(ref_low), helpers.PREDICTOR_RTOL, "low"
    )
    helpers.assert_close(
        scores, official.to_numpy(ref_scores), helpers.PREDICTOR_RTOL, "scores"
    )
    ref_logits = official.to_numpy(ref_logits)
    differ = masks != (ref_logits > 0)
    assert not np.any(
        differ & (np.abs(ref_logits) >= helpers.MASK_LOGIT_MARGIN)
    )


def test_stored_embedding_gives_the_same_masks(pair):
    ours, _, image = pair
    kwargs = {k: np.asarray(v) for k, v in PROMPTS["box"].items()}
    first = ours.predict(**kwargs)
    other = SAMPredictor(ours.model)
    other.set_image_embedding(ours.get_image_embedding(), image.shape[:2])
    second = other.predict(**kwargs)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stability_fallback_picks_a_multimask_output(pair):
    ours, _, _ = pair
    kwargs = {k: np.asarray(v) for k, v in PROMPTS["point"].items()}
    multi, multi_scores, multi_low = ours.predict(**kwargs)
    fallback = SAMPredictor(
        ours.model, use_stability_fallback=True, stability_thresh=1.01
    )  # every single-mask output counts as unstable
    fallback.set_image_embedding(ours.get_image_embedding(), ours.original_size)
    _, scores, low = fallback.predict(**kwargs, multimask_output=False)
    best = int(np.argmax(multi_scores))
    np.testing.assert_array_equal(low[0], multi_low[best])
    assert scores[0] == multi_scores[best]
    # Off by default: the single-mask token, as the official predictor.
    _, plain_scores, _ = ours.predict(**kwargs, multimask_output=False)
    assert plain_scores.shape == (1,)


def test_predict_before_set_image_raises():
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    predictor = SAMPredictor(model)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(point_coords=[[1, 1]], point_labels=[1])
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.get_image_embedding()


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((10, 10), np.uint8), r"\(H, W, 3\)"),
    ],
)
def test_bad_images(pair, image, match):
    with pytest.raises(ValueError, match=match):
        pair[0].set_image(image)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(point_coords=[[700.0, 10.0]], point_labels=[1]), "point_coords"),
        (dict(point_coords=[[-1.0, 10.0]], point_labels=[1]), "point_coords"),
        (dict(point_coords=[[np.nan, 1.0]], point_labels=[1]), "point_coords"),
        (dict(point_coords=[[1.0, 1.0]], point_labels=[1, 0]), "point_labels"),
        (dict(point_coords=[[1.0, 1.0]], point_labels=[7]), "point_labels"),
        (dict(point_coords=[[1.0, 1.0]]), "point_labels"),
        (dict(point_coords=[1.0, 1.0], point_labels=[1]), "point_coords"),
        (dict(box=[100.0, 10.0, 50.0, 60.0]), "box"),
        (dict(box=[10.0, 10.0, 50.0]), "box"),
        (dict(box=[10.0, 10.0, 50.0, 900.0]), "box"),
        (dict(mask_input=np.zeros((1, 32, 32))), "mask_input"),
    ],
)
def test_bad_prompts(pair, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pair[0].predict(**kwargs)


def test_prompt_batches_are_chunked_and_padded_to_powers_of_two(pair):
    ours, _, image = pair
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 479, (11, 1, 2))
    labels = np.ones((11, 1), np.int32)
    _, scores, low = ours.predict_batch(points, labels)

    seen = []
    chunked = SAMPredictor(ours.model, decode_chunk_size=4)
    chunked.set_image_embedding(ours.get_image_embedding(), image.shape[:2])
    decode = ours.model.compiled_method("decode")
    cache = ours.model.__dict__["_compiled_methods"]

    def spy(features, **prompts):
        seen.append(prompts["points"].shape[0])
        return decode(features, **prompts)

    cache["decode"] = spy
    try:
        _, chunk_scores, chunk_low = chunked.predict_batch(points, labels)
        chunked.predict_batch(points[:3], labels[:3])
    finally:
        cache["decode"] = decode
    # 11 prompts in chunks of 4: 4, 4, then 3 padded to 4; 3 -> 4.
    assert seen == [4, 4, 4, 4]
    assert chunk_low.shape == low.shape and chunk_scores.shape == (11, 3)
    helpers.assert_close(chunk_low, low, helpers.SAME_BACKEND_RTOL)
    helpers.assert_close(chunk_scores, scores, helpers.SAME_BACKEND_RTOL)
    with pytest.raises(ValueError, match="decode_chunk_size"):
        SAMPredictor(ours.model, decode_chunk_size=0)


def test_low_res_then_upscale_is_predict_batch(pair):
    ours, _, _ = pair
    boxes = np.array([[120.0, 80.0, 500.0, 420.0], [10.0, 20.0, 200.0, 150.0]])
    masks, scores, low = ours.predict_batch(boxes=boxes)
    low2, scores2 = ours.predict_low_res(boxes=boxes)
    np.testing.assert_array_equal(low2, low)
    np.testing.assert_array_equal(scores2, scores)
    np.testing.assert_array_equal(ours.upscale(low2, threshold=0.0), masks)
    assert ours.upscale(low2).dtype == np.float32
    with pytest.raises(ValueError, match="at least one of"):
        ours.predict_low_res()


def test_on_an_accelerator_embedding_and_upscaling_stay_there(
    pair, monkeypatch
):
    ours, _, image = pair
    prompt = dict(point_coords=np.array([[300.0, 200.0]]), point_labels=[1])
    host = ours.predict(return_logits=True, **prompt)
    assert ours._decoder_embedding() is ours.features
    calls = []
    real = device_upscale.postprocess_masks

    def spy(*args, **kwargs):
        calls.append(kwargs.get("threshold"))
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "on_accelerator", lambda: True)
    monkeypatch.setattr(device_upscale, "postprocess_masks", spy)
    kept = ours._decoder_embedding()
    assert not isinstance(kept, np.ndarray)
    assert ours._decoder_embedding() is kept  # one copy per picture
    device = ours.predict(return_logits=True, **prompt)
    masks, _, _ = ours.predict(**prompt)
    assert calls == [None, 0.0]
    helpers.assert_close(device[0], host[0], 1e-6)
    np.testing.assert_array_equal(device[1], host[1])
    assert masks.dtype == bool and masks.shape == host[0].shape
    # Another picture's embedding replaces the kept copy.
    ours.set_image_embedding(ours.get_image_embedding() + 0, image.shape[:2])
    assert ours._decoder_embedding() is not kept
