"""The automatic mask generator's NumPy helpers, against the official SAM
utilities and independent brute-force formulas."""

import collections
import sys
import types

import numpy as np
import pytest
import torch

from keras_sam.inference import amg_utils
from support.reference import official  # noqa: F401  (stubs torchvision)

ref_amg = sys.modules["segment_anything.utils.amg"]


def _random_masks(rng, n, h, w):
    """Random masks of several densities, plus an empty and a full one."""
    density = rng.uniform(0.0, 1.0, (n, 1, 1)) ** 3
    masks = rng.uniform(size=(n, h, w)) < density
    masks[0] = False
    masks[-1] = True
    return masks


# -- point grids and crop boxes ----------------------------------------------


@pytest.mark.parametrize("n,layers,scale", [(1, 0, 1), (8, 2, 2), (32, 3, 3)])
def test_point_grids_match_official(n, layers, scale):
    ours = amg_utils.build_all_layer_point_grids(n, layers, scale)
    ref = ref_amg.build_all_layer_point_grids(n, layers, scale)
    assert len(ours) == len(ref) == layers + 1
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "size", [(240, 320), (480, 640), (1500, 2250), (37, 100), (1, 1)]
)
@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize("ratio", [512 / 1500, 0.0, 0.9])
def test_crop_boxes_match_official(size, layers, ratio):
    ours = amg_utils.generate_crop_boxes(size, layers, ratio)
    ref = ref_amg.generate_crop_boxes(size, layers, ratio)
    assert ours == ref
    assert len(ours[0]) == sum(4**i for i in range(layers + 1))


# -- boxes -------------------------------------------------------------------


def test_masks_to_boxes_matches_official_and_formula():
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 12, 9, 13)
    masks[3] = False
    masks[3, 4, 7] = True  # a single pixel
    boxes = amg_utils.masks_to_boxes(masks)
    ref = ref_amg.batched_mask_to_box(torch.as_tensor(masks))
    np.testing.assert_array_equal(boxes, official.to_numpy(ref))
    for mask, box in zip(masks, boxes, strict=True):
        ys, xs = np.nonzero(mask)
        expected = (
            [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0] * 4
        )
        assert box.tolist() == expected
    assert boxes.dtype == np.int64
    # Leading batch axes are kept.
    assert amg_utils.masks_to_boxes(masks.reshape(3, 4, 9, 13)).shape == (
        3,
        4,
        4,
    )


def test_boxes_near_crop_edge_matches_official():
    rng = np.random.default_rng(1)
    crop_box, image_box = [100, 50, 300, 250], [0, 0, 300, 400]
    x1 = rng.integers(100, 300, 200)
    y1 = rng.integers(50, 250, 200)
    boxes = np.stack(
        [x1, y1, rng.integers(x1, 301), rng.integers(y1, 251)], axis=1
    )
    ours = amg_utils.boxes_near_crop_edge(boxes, crop_box, image_box)
    # The official helper takes boxes in the crop's frame.
    in_crop = torch.as_tensor(boxes - np.array([100, 50, 100, 50]))
    ref = ref_amg.is_box_near_crop_edge(in_crop, crop_box, image_box)
    np.testing.assert_array_equal(ours, official.to_numpy(ref))
    assert 0 < ours.sum() < len(ours)


def test_box_conversions():
    boxes = np.array([[1, 2, 4, 8], [0, 0, 0, 0]])
    np.testing.assert_array_equal(
        amg_utils.box_xyxy_to_xywh(boxes), [[1, 2, 3, 6], [0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(amg_utils.box_area(boxes), [18, 0])


# -- NMS ---------------------------------------------------------------------


def _brute_force_nms(boxes, scores, thresh):
    """Greedy NMS written with Python scalars, one pair at a time."""
    boxes = np.asarray(boxes, np.float32)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep, removed = [], set()
    for a, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[a + 1 :]:
            bi, bj = boxes[i], boxes[j]
            w = max(np.float32(0), min(bi[2], bj[2]) - max(bi[0], bj[0]))
            h = max(np.float32(0), min(bi[3], bj[3]) - max(bi[1], bj[1]))
            area_i = (bi[2] - bi[0]) * (bi[3] - bi[1])
            area_j = (bj[2] - bj[0]) * (bj[3] - bj[1])
            with np.errstate(invalid="ignore"):
                iou = (w * h) / (area_i + area_j - w * h)
            if float(iou) > thresh:
                removed.add(j)
    return keep


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.7, 1.0])
def test_nms_matches_brute_force(seed, thresh):
    rng = np.random.default_rng(seed)
    n = 60
    x1, y1 = rng.integers(0, 50, n), rng.integers(0, 50, n)
    boxes = np.stack(
        [x1, y1, x1 + rng.integers(0, 30, n), y1 + rng.integers(0, 30, n)],
        axis=1,
    )
    boxes[5] = boxes[6]  # duplicates
    boxes[7] = [3, 3, 3, 3]  # zero area
    boxes[8] = [3, 3, 3, 3]
    scores = rng.integers(0, 8, n).astype(np.float32)  # many ties
    keep = amg_utils.nms(boxes, scores, thresh)
    assert keep.tolist() == _brute_force_nms(boxes, scores, thresh)
    assert keep.dtype == np.int64


def test_nms_empty_and_bad_lengths():
    assert amg_utils.nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0
    with pytest.raises(ValueError, match="boxes"):
        amg_utils.nms(np.zeros((3, 4)), np.zeros(2), 0.5)


# -- stability ---------------------------------------------------------------


def test_stability_score_matches_official_and_formula():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (6, 20, 30)).astype(np.float32)
    logits[0] = -5.0  # nothing above threshold - offset
    ours = amg_utils.stability_score(logits, 0.0, 1.0)
    ref = official.to_numpy(
        ref_amg.calculate_stability_score(torch.as_tensor(logits), 0.0, 1.0)
    )
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours[1:], ref[1:])
    assert np.isnan(ref[0]) and ours[0] == 0.0  # documented difference
    high = (logits > 1.0).sum(axis=(1, 2))
    low = (logits > -1.0).sum(axis=(1, 2))
    np.testing.assert_allclose(ours[1:], high[1:] / low[1:], rtol=1e-7)


# -- RLE ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_rle_round_trip_and_official_encoding(seed):
    rng = np.random.default_rng(seed)
    masks = _random_masks(rng, 10, 7 + seed, 11)
    rles = amg_utils.masks_to_rle(masks)
    ref = ref_amg.mask_to_rle_pytorch(torch.as_tensor(masks))
    for mask, rle, ref_rle in zip(masks, rles, ref, strict=True):
        assert rle["size"] == ref_rle["size"] == list(mask.shape)
        assert rle["counts"].tolist() == ref_rle["counts"]
        np.testing.assert_array_equal(amg_utils.rle_to_mask(rle), mask)
        np.testing.assert_array_equal(ref_amg.rle_to_mask(ref_rle), mask)
        assert amg_utils.rle_area(rle) == mask.sum()
    assert rles[0]["counts"].tolist() == [masks[0].size]  # empty
    assert rles[-1]["counts"].tolist() == [0, masks[0].size]  # full


CROPS = [
    (0, 0, 6, 5),  # top-left corner
    (2, 1, 8, 6),  # inside
    (4, 3, 10, 8),  # bottom-right corner
    (0, 2, 6, 7),  # left edge
    (3, 0, 9, 5),  # top edge
    (2, 3, 8, 8),  # bottom edge, not the right one
    (0, 0, 10, 8),  # the whole image
]


@pytest.mark.parametrize("crop_box", CROPS)
def test_rle_of_a_crop_equals_rle_of_the_padded_mask(crop_box):
    rng = np.random.default_rng(3)
    x0, y0, x1, y1 = crop_box
    image_size = (8, 10)
    masks = _random_masks(rng, 8, y1 - y0, x1 - x0)
    masks[1] = False
    masks[1, 0, 0] = masks[1, -1, -1] = True  # runs at the crop's corners
    rles = amg_utils.masks_to_rle(
        masks, crop_box=crop_box, image_size=image_size
    )
    padded = np.zeros((len(masks),) + image_size, bool)
    padded[:, y0:y1, x0:x1] = masks
    ref = ref_amg.mask_to_rle_pytorch(torch.as_tensor(padded))
    for rle, ref_rle, full in zip(rles, ref, padded, strict=True):
        assert rle["size"] == [8, 10]
        assert rle["counts"].tolist() == ref_rle["counts"]
        np.testing.assert_array_equal(amg_utils.rle_to_mask(rle), full)


def test_rle_bad_inputs():
    assert amg_utils.masks_to_rle(np.zeros((0, 3, 4), bool)) == []
    with pytest.raises(ValueError, match="masks"):
        amg_utils.masks_to_rle(np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="crop_box"):
        amg_utils.masks_to_rle(
            np.zeros((1, 3, 4), bool), crop_box=(0, 0, 3, 4), image_size=(9, 9)
        )
    with pytest.raises(ValueError, match="crop_box"):
        amg_utils.masks_to_rle(
            np.zeros((1, 3, 4), bool), crop_box=(6, 0, 10, 3), image_size=(9, 9)
        )
    with pytest.raises(ValueError, match="rle"):
        amg_utils.rle_to_mask({"size": [2, 2], "counts": [1, 2]})


def test_coco_encode_rle_matches_pycocotools():
    from pycocotools import mask as mask_utils  # test extra: no skip

    rng = np.random.default_rng(4)
    masks = _random_masks(rng, 5, 13, 17)
    for mask, rle in zip(masks, amg_utils.masks_to_rle(masks), strict=True):
        coco = amg_utils.coco_encode_rle(rle)
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco["counts"] == expected["counts"].decode("utf-8")
        assert list(coco["size"]) == [13, 17]
        np.testing.assert_array_equal(mask_utils.decode(coco), mask)


def test_missing_pycocotools_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    rle = amg_utils.masks_to_rle(np.ones((1, 2, 2), bool))[0]
    with pytest.raises(ImportError, match="pip install pycocotools"):
        amg_utils.coco_encode_rle(rle)


# -- small regions -----------------------------------------------------------


def _components(mask):
    """8-connected components by breadth-first search, as pixel sets."""
    seen, comps = np.zeros_like(mask), []
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, comp = collections.deque([(y, x)]), []
        while queue:
            cy, cx = queue.popleft()
            comp.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx]:
                        if not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
        comps.append(comp)
    return comps


def _expected_small_regions(mask, area, mode):
    comps = _components(~mask if mode == "holes" else mask)
    small = [c for c in comps if len(c) < area]
    if not small:
        return mask, False
    out = mask.copy()
    if mode == "holes":
        for c in small:
            out[tuple(np.array(c).T)] = True
        return out, True
    big = [c for c in comps if len(c) >= area]
    if not big:
        big = [max(comps, key=len)]  # first largest, in scan order
    out[:] = False
    for c in big:
        out[tuple(np.array(c).T)] = True
    return out, True


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [1, 3, 8, 1000])
def test_remove_small_regions_matches_flood_fill(seed, mode, area):
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=(14, 12)) < rng.uniform(0.2, 0.8)
    ours, changed = amg_utils.remove_small_regions(mask, area, mode)
    expected, expected_changed = _expected_small_regions(mask, area, mode)
    np.testing.assert_array_equal(ours, expected)
    assert changed == expected_changed


def _fake_cv2():
    """A stand-in for OpenCV's `connectedComponents` (label count including
    the background, labels) built on the test's flood fill."""

    def connected_components(image, connectivity):
        assert connectivity == 8
        labels = np.zeros(image.shape, np.int32)
        comps = _components(image.astype(bool))
        for k, comp in enumerate(comps, start=1):
            labels[tuple(np.array(comp).T)] = k
        return len(comps) + 1, labels

    return types.SimpleNamespace(connectedComponents=connected_components)


def test_connected_components_fall_back_to_opencv(monkeypatch):
    rng = np.random.default_rng(5)
    mask = rng.uniform(size=(10, 9)) < 0.4
    expected = amg_utils.connected_components(mask)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)
    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2())
    labels, sizes = amg_utils.connected_components(mask)
    np.testing.assert_array_equal(labels, expected[0])
    np.testing.assert_array_equal(sizes, expected[1])
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        amg_utils.connected_components(mask)


def test_remove_small_regions_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        amg_utils.remove_small_regions(np.ones((2, 2), bool), 1, "dots")


def test_stability_score_of_an_empty_mask():
    logits = np.full((2, 4, 4), -5.0, np.float32)
    np.testing.assert_array_equal(amg_utils.stability_score(logits, 0, 1), 0)
    np.testing.assert_array_equal(
        amg_utils.stability_score(logits, 0, 1, empty=1.0), 1
    )
