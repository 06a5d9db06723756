"""SAMAutomaticMaskGenerator against the official SamAutomaticMaskGenerator.

The official generator needs three torchvision functions that this machine
lacks (there is no CPU torchvision build here, and `support/reference/
official.py` stubs them to raise): `batched_nms` and `box_area`, which it
imports into its own module, and the image resize of `SamPredictor.
set_image`. The `official_generator` fixture replaces the first two, in the
official module's namespace only and for one test at a time, by the small
PyTorch versions below (torchvision's semantics), and gives the official
predictor `official.set_image_without_torchvision`. With
`min_mask_region_area` it also needs OpenCV's `connectedComponentsWithStats`,
given here by SciPy (compared against a flood fill in `test_amg_utils.py`).
"""

import json
import sys
import types

import numpy as np
import pytest

import keras_sam
from keras_sam.inference import amg_utils
from keras_sam.inference import automatic_mask_generator
from keras_sam.inference.automatic_mask_generator import (
    SAMAutomaticMaskGenerator,
)
from keras_sam.models.sam import SAM
from support.fixtures import DECODER
from support.fixtures import ENCODER
from support.fixtures import PROMPT
from support.fixtures import smooth_image as _image
from support.reference import official
from tests import helpers

ref_amg = sys.modules["segment_anything.automatic_mask_generator"]

IMAGE_SHAPE = (240, 320, 3)


# -- torchvision and OpenCV stand-ins for the official generator -------------


def _cv2_connected_components_with_stats(image, connectivity):
    """OpenCV's labels and stats (area in the last column), via SciPy."""
    from scipy import ndimage

    structure = np.ones((3, 3)) if connectivity == 8 else None
    labels, k = ndimage.label(image, structure=structure)
    stats = np.zeros((k + 1, 5), np.int32)
    stats[:, -1] = np.bincount(labels.reshape(-1), minlength=k + 1)
    return k + 1, labels, stats, None


# -- models ------------------------------------------------------------------


def _structured_official_sam():
    model = official.make_sam(
        ENCODER, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, seed=0
    )
    official.structure_weights_(model)
    return model


@pytest.fixture(scope="module")
def models():
    ref_model = _structured_official_sam()
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    keras_sam.load_official_weights(model, ref_model.state_dict())
    return model, ref_model


@pytest.fixture(scope="module")
def image():
    return _image(IMAGE_SHAPE)


@pytest.fixture
def official_generator(models, monkeypatch):
    fake_cv2 = types.SimpleNamespace(
        connectedComponentsWithStats=_cv2_connected_components_with_stats
    )
    monkeypatch.setitem(sys.modules, "cv2", fake_cv2)

    def make(**kwargs):
        return official.make_generator(models[1], **kwargs)

    return make


# Settings under which the random-weight model keeps a few masks: the
# predicted IoUs are around 0 and stability scores below 0.8.
GRID = dict(
    points_per_side=8,
    points_per_batch=24,  # 64 points: batches of 24, 24, 16
    pred_iou_thresh=0.01,
    stability_score_thresh=0.05,
    stability_score_offset=0.5,
)
CASES = {
    "grid": GRID,
    "crops": dict(
        points_per_side=8,
        pred_iou_thresh=-1.0,  # off
        stability_score_thresh=0.02,
        stability_score_offset=0.2,
        box_nms_thresh=0.9,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
    ),
    "small_regions": dict(
        points_per_side=8,
        pred_iou_thresh=-1.0,
        stability_score_thresh=0.05,
        stability_score_offset=0.5,
        box_nms_thresh=0.9,
        min_mask_region_area=1500,
    ),
}


@pytest.fixture(scope="module")
def grid_records(models, image):
    return SAMAutomaticMaskGenerator(models[0], **GRID).generate(image)


def _reference_logits(ref_model, image, record):
    """The official predictor's logits behind `record`, in image pixels
    (-inf outside its crop): the crop's image, the record's point, and the
    multimask output with the record's predicted IoU."""
    x, y, w, h = (int(v) for v in record["crop_box"])
    predictor = official.SamPredictor(ref_model)
    official.set_image_without_torchvision(
        predictor, image[y : y + h, x : x + w]
    )
    logits, ious, _ = predictor.predict(
        point_coords=np.asarray(record["point_coords"]) - [x, y],
        point_labels=np.array([1]),
        multimask_output=True,
        return_logits=True,
    )
    full = np.full(image.shape[:2], -np.inf, np.float32)
    k = int(np.argmin(np.abs(ious - record["predicted_iou"])))
    full[y : y + h, x : x + w] = logits[k]
    return full


def _assert_records_match(ours, ref, ref_model, image):
    """Same records in the same order; returns the number of differing mask
    pixels (each one within MASK_LOGIT_MARGIN of the official threshold)."""
    assert len(ours) == len(ref) > 3
    for o, r in zip(ours, ref, strict=True):
        assert o.keys() == r.keys()
        assert o["bbox"] == r["bbox"]
        assert o["crop_box"] == r["crop_box"]  # official: sometimes floats
        assert o["point_coords"] == r["point_coords"]
        # Areas may differ only by the mask pixels checked below.
        assert o["area"] == int(np.sum(o["segmentation"]))
        assert r["area"] == int(np.sum(r["segmentation"]))
    for key in ("predicted_iou", "stability_score"):
        helpers.assert_close(
            np.array([o[key] for o in ours]),
            np.array([r[key] for r in ref]),
            helpers.PREDICTOR_RTOL,
            key,
        )
    differing = 0
    for o, r in zip(ours, ref, strict=True):
        differ = o["segmentation"] != r["segmentation"]
        if np.any(differ):
            logits = _reference_logits(ref_model, image, r)
            near = np.abs(logits) < helpers.MASK_LOGIT_MARGIN
            assert not np.any(differ & ~near), int(np.sum(differ & ~near))
            differing += int(np.sum(differ))
    return differing


@pytest.mark.parity
@pytest.mark.parametrize("case", sorted(CASES))
def test_generate_matches_official(models, image, official_generator, case):
    model, ref_model = models
    kwargs = CASES[case]
    ref = official_generator(**kwargs).generate(image)
    ours = SAMAutomaticMaskGenerator(model, **kwargs).generate(image)
    # Measured: identical bboxes and stability scores on all three backends,
    # predicted IoUs within 1.2e-6 relative (7e-8 absolute); masks identical
    # but for 1 pixel of 1 record on PyTorch (grid and small_regions; its
    # official logit is within MASK_LOGIT_MARGIN of the threshold: the
    # decoder sums its upscaling products in another order than the
    # convolutions do).
    # With small-region removal a flipped pixel could change a region's
    # fate; such a change would show as differing pixels far from the
    # threshold, which the check refuses.
    _assert_records_match(ours, ref, ref_model, image)
    for o in ours:
        assert o["segmentation"].dtype == bool
        assert o["segmentation"].shape == IMAGE_SHAPE[:2]
        assert o["area"] == int(o["segmentation"].sum())
    if case == "crops":
        crops = {tuple(o["crop_box"]) for o in ours}
        assert len(crops) > 1  # records from the whole image and from crops


@pytest.mark.parity
def test_reference_logits_reproduce_an_official_record(
    models, image, grid_records
):
    # The helper behind the near-threshold allowance finds the right mask.
    record = grid_records[0]
    logits = _reference_logits(models[1], image, record)
    near = np.abs(logits) < helpers.MASK_LOGIT_MARGIN
    differ = (logits > 0) != record["segmentation"]
    assert not np.any(differ & ~near)


@pytest.mark.parametrize("mode", ["uncompressed_rle", "coco_rle"])
def test_rle_output_modes_decode_to_the_binary_masks(
    models, image, grid_records, mode
):
    records = SAMAutomaticMaskGenerator(
        models[0], output_mode=mode, **GRID
    ).generate(image)
    assert len(records) == len(grid_records)
    for rec, binary in zip(records, grid_records, strict=True):
        json.dumps(rec)  # plain Python values
        rle = rec["segmentation"]
        assert rle["size"] == list(IMAGE_SHAPE[:2])
        if mode == "uncompressed_rle":
            assert isinstance(rle["counts"], list)
            mask = amg_utils.rle_to_mask(rle)
        else:
            from pycocotools import mask as mask_utils  # test extra

            assert isinstance(rle["counts"], str)
            mask = mask_utils.decode(rle).astype(bool)
        np.testing.assert_array_equal(mask, binary["segmentation"])
        for key in ("area", "bbox", "predicted_iou", "stability_score"):
            assert rec[key] == binary[key]


def test_chunked_upsampling_gives_the_same_records(
    models, image, grid_records, monkeypatch
):
    # One mask per upsampling chunk: bounded memory, same result.
    monkeypatch.setattr(automatic_mask_generator, "_MAX_UPSAMPLED_PIXELS", 1)
    records = SAMAutomaticMaskGenerator(models[0], **GRID).generate(image)
    assert len(records) == len(grid_records)
    for a, b in zip(records, grid_records, strict=True):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["stability_score"] == b["stability_score"]


def test_progress_line_on_stderr(models, image, capsys):
    generator = SAMAutomaticMaskGenerator(
        models[0],
        points_per_side=3,
        points_per_batch=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        progress=True,
    )
    generator.generate(image)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "point batch 3/3" in captured.err
    assert captured.err.endswith("\n")


def test_progress_line_ends_when_interrupted(
    models, image, capsys, monkeypatch
):
    generator = SAMAutomaticMaskGenerator(
        models[0], points_per_side=3, points_per_batch=4, progress=True
    )
    calls = []

    def interrupt(*args):
        calls.append(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(generator, "_process_batch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        generator.generate(image)
    captured = capsys.readouterr()
    assert len(calls) == 1
    assert "point batch 0/3" in captured.err
    assert captured.err.endswith("\n")


def test_strict_thresholds_give_no_records(models, image):
    generator = SAMAutomaticMaskGenerator(
        models[0], points_per_side=2, stability_score_thresh=1.0
    )
    assert generator.generate(image) == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(output_mode="png"), "output_mode"),
        (dict(points_per_side=None), "points_per_side"),
        (dict(point_grids=[np.zeros((4, 2))]), "point_grids"),
        (dict(points_per_side=0), "points_per_side"),
        (dict(points_per_side=2.5), "points_per_side"),
        (dict(points_per_batch=0), "points_per_batch"),
        (dict(pred_iou_thresh=float("nan")), "pred_iou_thresh"),
        (dict(stability_score_thresh=1.5), "stability_score_thresh"),
        (dict(stability_score_offset=-1.0), "stability_score_offset"),
        (dict(box_nms_thresh=-0.1), "box_nms_thresh"),
        (dict(crop_nms_thresh=2.0), "crop_nms_thresh"),
        (dict(crop_overlap_ratio=1.0), "crop_overlap_ratio"),
        (dict(crop_n_layers=-1), "crop_n_layers"),
        (dict(crop_n_points_downscale_factor=0), "downscale_factor"),
        (
            dict(
                points_per_side=4,
                crop_n_layers=2,
                crop_n_points_downscale_factor=4,
            ),
            "downscale_factor",
        ),
        (dict(min_mask_region_area=-5), "min_mask_region_area"),
        (
            dict(points_per_side=None, point_grids=np.zeros((4, 2))),
            "point_grids",
        ),
        (dict(points_per_side=None, point_grids=3), "point_grids"),
        (
            dict(points_per_side=None, point_grids=[np.full((3, 2), 1.5)]),
            "point_grids",
        ),
        (
            dict(points_per_side=None, point_grids=[np.zeros((3, 3))]),
            "point_grids",
        ),
        (
            dict(
                points_per_side=None,
                point_grids=[np.zeros((3, 2))],
                crop_n_layers=1,
            ),
            "point_grids",
        ),
    ],
)
def test_bad_arguments(models, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAMAutomaticMaskGenerator(models[0], **kwargs)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((0, 10, 3), np.uint8), r"\(H, W, 3\)"),
    ],
)
def test_bad_images(models, bad, match):
    generator = SAMAutomaticMaskGenerator(models[0], points_per_side=2)
    with pytest.raises(ValueError, match=match):
        generator.generate(bad)


def test_explicit_point_grids(models, image, grid_records):
    grids = amg_utils.build_all_layer_point_grids(8, 0, 1)
    kwargs = dict(GRID, points_per_side=None, point_grids=grids)
    records = SAMAutomaticMaskGenerator(models[0], **kwargs).generate(image)
    assert [r["bbox"] for r in records] == [r["bbox"] for r in grid_records]


def test_missing_extras_fail_at_construction(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        SAMAutomaticMaskGenerator(models[0], output_mode="coco_rle")
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        SAMAutomaticMaskGenerator(models[0], min_mask_region_area=10)
