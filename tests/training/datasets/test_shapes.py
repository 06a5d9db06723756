"""The synthetic shapes dataset: scenes, prompts, model-frame batches."""

import numpy as np
import pytest

from keras_sam.inference import transforms
from keras_sam.training.datasets import ShapesDataset
from keras_sam.training.datasets import make_scene

SEEDS = range(12)


def test_make_scene_shapes_and_dtypes():
    image, masks = make_scene(0, image_size=(48, 80))
    assert image.shape == (48, 80, 3) and image.dtype == np.uint8
    assert masks.ndim == 3 and masks.shape[1:] == (48, 80)
    assert masks.dtype == bool


def test_make_scene_is_deterministic():
    for seed in (0, 7, (3, 4, 5)):
        a_image, a_masks = make_scene(seed)
        b_image, b_masks = make_scene(seed)
        np.testing.assert_array_equal(a_image, b_image)
        np.testing.assert_array_equal(a_masks, b_masks)
    assert not np.array_equal(make_scene(0)[0], make_scene(1)[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_are_visible_disjoint_and_not_tiny(seed):
    h, w = 128, 96
    _, masks = make_scene(seed, image_size=(h, w), num_objects=(2, 5))
    assert 1 <= len(masks) <= 5
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    assert np.all(areas >= 0.002 * h * w), areas
    # Occlusion: a pixel belongs to at most one (visible) object.
    assert masks.sum(axis=0).max() <= 1


def test_min_visible_fraction_drops_small_objects():
    counts = [len(make_scene(s)[1]) for s in SEEDS]
    strict = [len(make_scene(s, min_visible_fraction=0.05)[1]) for s in SEEDS]
    assert all(b <= a for a, b in zip(counts, strict, strict=True))
    assert sum(strict) < sum(counts)
    for s in SEEDS:
        _, masks = make_scene(s, min_visible_fraction=0.05)
        assert np.all(masks.sum(axis=(1, 2)) >= 0.05 * 256 * 256)


def test_num_objects_bounds_the_count():
    for seed in SEEDS:
        assert len(make_scene(seed, num_objects=(1, 2))[1]) <= 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=(8, 64)), "image_size"),
        (dict(image_size=(64,)), "image_size"),
        (dict(num_objects=(3, 2)), "num_objects"),
        (dict(num_objects=(0, 2)), "num_objects"),
        (dict(min_visible_fraction=1.0), "min_visible_fraction"),
    ],
)
def test_make_scene_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scene(0, **kwargs)


# -- ShapesDataset -----------------------------------------------------------

SMALL = dict(image_size=(64, 96), input_size=64)
# preprocess_shape((64, 96), 64): long side 96 -> 64, short int(64*2/3+0.5).
RESIZED = (43, 64)


def test_batch_shapes_and_dtypes():
    data = ShapesDataset(10, 4, seed=0, **SMALL)
    assert len(data) == 3
    x, y = data[0]
    assert set(x) == {"images", "points", "labels"}
    assert x["images"].shape == (4, 64, 64, 3)
    assert x["images"].dtype == np.float32
    assert x["points"].shape == (4, 2, 2) and x["points"].dtype == np.float32
    assert x["labels"].shape == (4, 2) and x["labels"].dtype == np.int32
    assert y.shape == (4, 16, 16) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert np.all(y.sum(axis=(1, 2)) > 0)  # ground truth never empty
    # The last batch holds the remainder.
    x, y = data[2]
    assert x["images"].shape[0] == y.shape[0] == 2
    with pytest.raises(IndexError):
        data[3]


def test_mask_size_follows_the_decoder():
    data = ShapesDataset(2, 2, seed=0, input_size=64, mask_size=32)
    assert data[0][1].shape == (2, 32, 32)


def test_dataset_is_deterministic_and_batch_size_free():
    a = ShapesDataset(8, 4, seed=3, **SMALL)
    b = ShapesDataset(8, 4, seed=3, **SMALL)
    c = ShapesDataset(8, 2, seed=3, **SMALL)
    for index in (1, 0):  # any access order
        xa, ya = a[index]
        xb, yb = b[index]
        for key in xa:
            np.testing.assert_array_equal(xa[key], xb[key])
        np.testing.assert_array_equal(ya, yb)
    # Example j does not depend on the batch size.
    xa, ya = a[1]
    xc, yc = c[3]
    np.testing.assert_array_equal(xa["images"][2:], xc["images"])
    np.testing.assert_array_equal(ya[2:], yc)
    xd, yd = ShapesDataset(8, 4, seed=4, **SMALL)[1]
    assert not np.array_equal(xa["images"], xd["images"])


def test_images_are_the_normalised_padded_scene():
    # Scene size == input size: no resize, so the pixels come back exactly.
    data = ShapesDataset(2, 2, seed=0, image_size=(64, 64), input_size=64)
    x, _ = data[0]
    std = np.array(transforms.PIXEL_STD, np.float32)
    mean = np.array(transforms.PIXEL_MEAN, np.float32)
    for b in range(2):
        pixels = x["images"][b] * std + mean
        np.testing.assert_allclose(pixels, data.example(b)["image"], atol=1e-3)
    # Non-square scene: resized to (43, 64) and zero-padded below.
    data = ShapesDataset(2, 2, seed=0, **SMALL)
    x, y = data[0]
    assert data.resized_size == RESIZED
    assert np.all(x["images"][:, RESIZED[0] :] == 0)
    assert np.any(x["images"][:, RESIZED[0] - 1] != 0)
    assert np.all(y[:, 11:] == 0)  # low-res rows 11.. cover input rows 44..


def test_points_lie_inside_their_objects():
    data = ShapesDataset(24, 8, seed=5, prompt="point", **SMALL)
    scale = np.array([RESIZED[1] / 96, RESIZED[0] / 64])
    for j in range(24):
        e = data.example(j)
        assert e["prompt"] == "point"
        (px, py), pad = e["coords"]
        assert px == int(px) and py == int(py)
        assert e["mask"][int(py), int(px)]
        np.testing.assert_array_equal(pad, [0, 0])
        np.testing.assert_array_equal(e["labels"], [1, -1])
        np.testing.assert_allclose(e["points"], e["coords"] * scale, rtol=1e-6)
    x, _ = data[0]
    assert np.all(x["labels"] == [1, -1])
    assert np.all(x["points"][:, 1] == 0)


def test_boxes_contain_most_of_their_objects():
    data = ShapesDataset(48, 8, seed=6, prompt="box", **SMALL)
    # Jitter cap: 20 px of a 1024 input, at input 64 and scale 2/3.
    cap = 20 * 64 / 1024 / (RESIZED[0] / 64)
    coverage = []
    for j in range(48):
        e = data.example(j)
        assert e["prompt"] == "box"
        np.testing.assert_array_equal(e["labels"], [2, 3])
        (x1, y1), (x2, y2) = e["coords"]
        assert 0 <= x1 <= x2 <= 95 and 0 <= y1 <= y2 <= 63
        rows, cols = np.nonzero(e["mask"])
        tight = [cols.min(), rows.min(), cols.max(), rows.max()]
        assert np.all(np.abs(np.array([x1, y1, x2, y2]) - tight) <= cap + 1e-4)
        inside = (cols >= x1) & (cols <= x2) & (rows >= y1) & (rows <= y2)
        coverage.append(inside.mean())
    # Measured (seed 6): min 0.74, mean 0.93.
    assert min(coverage) >= 0.5 and np.mean(coverage) >= 0.85, coverage


def test_mixed_prompts_use_both_kinds():
    data = ShapesDataset(40, 8, seed=7, **SMALL)
    kinds = [data.example(j)["prompt"] for j in range(40)]
    assert 10 <= kinds.count("box") <= 30
    x, _ = data[0]
    for labels in x["labels"]:
        assert labels.tolist() in ([1, -1], [2, 3])


@pytest.mark.parametrize("fraction", [0.0, 0.8, 1.0])
def test_box_fraction_sets_the_share_of_boxes(fraction):
    data = ShapesDataset(60, 6, seed=7, box_fraction=fraction, **SMALL)
    kinds = [data.example(j)["prompt"] for j in range(60)]
    boxes = kinds.count("box")
    if fraction in (0.0, 1.0):
        assert boxes == 60 * fraction
    else:  # Binomial(60, 0.8): mean 48, sd 3.1; seed 7 drew 48.
        assert 40 <= boxes <= 56, boxes
    x, _ = data[0]
    for kind, labels in zip(kinds[:6], x["labels"], strict=True):
        assert labels.tolist() == ([2, 3] if kind == "box" else [1, -1])


def test_ground_truth_matches_the_mask_area():
    # Fine low-res grid (256 input, 64x64 masks): the ground truth's area,
    # back in scene pixels, is the visible mask's area. Measured ratios:
    # 0.87-1.05.
    data = ShapesDataset(16, 8, seed=8, image_size=(128, 192), input_size=256)
    scale = data.resized_size[1] / 192
    for j in range(16):
        e = data.example(j)
        ratio = e["y"].sum() * 4**2 / (e["mask"].sum() * scale**2)
        assert 0.8 <= ratio <= 1.25, (j, ratio)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt="lasso"), "prompt"),
        (dict(mask_size=15), "mask_size"),
        (dict(seed=-1), "seed"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_examples=2.5), "num_examples"),
        (dict(box_noise=-0.1), "box_noise"),
        (dict(box_fraction=1.5), "box_fraction"),
        (dict(box_fraction=-0.1), "box_fraction"),
        (dict(image_size=(8, 8)), "image_size"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs, match):
    args = dict(num_examples=4, batch_size=2, seed=0, input_size=64)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**args)


# -- several prompts per image -----------------------------------------------


def test_prompts_per_image_shapes_and_targets():
    data = ShapesDataset(6, 3, seed=9, prompts_per_image=5, **SMALL)
    x, y = data[1]
    assert x["images"].shape == (3, 64, 64, 3)
    assert x["points"].shape == (3, 5, 2, 2)
    assert x["labels"].shape == (3, 5, 2) and y.shape == (3, 5, 16, 16)
    assert np.all(y.sum(axis=(2, 3)) > 0)
    for j in range(6):
        e = data.multi_prompt_example(j)
        np.testing.assert_array_equal(
            e["images"], data[j // 3][0]["images"][j % 3]
        )
        masks = {m.tobytes() for m in e["masks"]}
        # Every usable object is prompted before any is prompted twice.
        first = {m.tobytes() for m in e["masks"][: len(masks)]}
        assert first == masks
        for k in range(5):
            mask, kind = e["masks"][k], e["prompts"][k]
            if kind == "point":
                (px, py), _ = e["coords"][k]
                assert mask[int(py), int(px)]
                assert e["labels"][k].tolist() == [1, -1]
            else:
                assert e["labels"][k].tolist() == [2, 3]
            # Each target is its own object's low-res mask.
            area = e["y"][k].sum() * (64 / 16) ** 2
            scale = RESIZED[1] / 96
            assert 0.5 <= area / (mask.sum() * scale**2) <= 2.0


def test_prompts_per_image_is_deterministic_and_validated():
    a = ShapesDataset(4, 2, seed=1, prompts_per_image=3, **SMALL)[1]
    b = ShapesDataset(4, 4, seed=1, prompts_per_image=3, **SMALL)[0]
    for key in a[0]:
        np.testing.assert_array_equal(a[0][key], b[0][key][2:])
    np.testing.assert_array_equal(a[1], b[1][2:])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="prompts_per_image"):
            ShapesDataset(4, 2, seed=0, prompts_per_image=bad, **SMALL)
