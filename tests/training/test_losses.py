"""SAM's training loss against NumPy formulas, and a tiny fit()."""

import json
import time

import keras
import numpy as np
import pytest

from keras_sam.models.sam import SAM
from keras_sam.training import losses
from keras_sam.training.datasets import ShapesDataset
from tests import helpers

# float32 loss vs float64 NumPy formulas.
LOSS_RTOL = 1e-5


# -- independent NumPy formulas (float64) ------------------------------------


def np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def np_focal(t, x, alpha=0.25, gamma=2.0):
    t, x = np.broadcast_arrays(np.float64(t), np.float64(x))
    p = np_sigmoid(x)
    # -log p for positives, -log(1 - p) for negatives.
    ce = t * np.logaddexp(0, -x) + (1 - t) * np.logaddexp(0, x)
    p_t = p * t + (1 - p) * (1 - t)
    weight = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0
    return (weight * (1 - p_t) ** gamma * ce).mean(axis=(-2, -1))


def np_dice(t, x, smooth=1.0):
    t, x = np.broadcast_arrays(np.float64(t), np.float64(x))
    p = np_sigmoid(x)
    inter = (p * t).sum(axis=(-2, -1))
    return 1 - (2 * inter + smooth) / (
        p.sum(axis=(-2, -1)) + t.sum(axis=(-2, -1)) + smooth
    )


def np_iou(t, x, threshold=0.0):
    t, x = np.broadcast_arrays(t, x)
    pred, gt = x > threshold, t > 0.5
    inter = (pred & gt).sum(axis=(-2, -1))
    union = (pred | gt).sum(axis=(-2, -1))
    return inter / np.maximum(union, 1)


def np_sam_loss(t, masks, iou_pred, multimask_min=True, all_iou=False):
    t = t[:, None]  # (B, 1, H, W)
    mask_loss = 20 * np_focal(t, masks) + np_dice(t, masks)  # (B, T)
    iou_err = (iou_pred - np_iou(t, masks)) ** 2
    if not multimask_min:
        return mask_loss.mean(1) + iou_err.mean(1)
    rows = np.arange(len(t))
    best = np.argmin(mask_loss, axis=1)
    iou_term = iou_err.mean(1) if all_iou else iou_err[rows, best]
    return mask_loss[rows, best] + iou_term


def random_batch(seed=0, b=3, t=4, h=12, w=10):
    rng = np.random.default_rng(seed)
    y_true = (rng.uniform(size=(b, h, w)) > 0.6).astype("float32")
    masks = rng.normal(0, 4, (b, t, h, w)).astype("float32")
    iou_pred = rng.uniform(size=(b, t)).astype("float32")
    return y_true, masks, iou_pred


# -- the functions -----------------------------------------------------------


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.8, 1.5), (-1.0, 0.0)])
def test_focal_matches_numpy(alpha, gamma):
    y_true, masks, _ = random_batch()
    t = y_true[:, None]  # broadcasts against (B, T, H, W)
    ours = losses.sigmoid_focal_loss(t, masks, alpha=alpha, gamma=gamma)
    helpers.assert_close(
        ours, np_focal(t, masks, alpha, gamma), LOSS_RTOL, "focal"
    )


def test_focal_is_finite_for_large_logits():
    t = np.array([[[1.0, 0.0]]], "float32")
    x = np.array([[[-200.0, -200.0]]], "float32")
    ours = helpers.to_numpy(losses.sigmoid_focal_loss(t, x))
    # Positive pixel: 0.25 * 1 * 200; negative pixel: ~0.
    np.testing.assert_allclose(ours, [50.0 / 2], rtol=1e-6)


def test_dice_matches_numpy():
    y_true, masks, _ = random_batch(1)
    t = y_true[:, None]
    for smooth in (1.0, 1e-3):
        helpers.assert_close(
            losses.dice_loss(t, masks, smooth=smooth),
            np_dice(t, masks, smooth),
            LOSS_RTOL,
            "dice",
        )


def test_mask_iou_matches_numpy():
    y_true, masks, _ = random_batch(2)
    t = y_true[:, None]
    for threshold in (0.0, 1.5):
        helpers.assert_close(
            losses.mask_iou(t, masks, threshold=threshold),
            np_iou(t, masks, threshold),
            LOSS_RTOL,
            "iou",
        )
    # Two empty masks: 0 (union clamped to 1), as SAM 2.
    empty = np.zeros((1, 4, 4), "float32")
    assert helpers.to_numpy(losses.mask_iou(empty, empty - 1.0))[0] == 0.0


@pytest.mark.parametrize(
    "multimask_min, all_iou", [(True, False), (True, True), (False, False)]
)
def test_sam_loss_matches_numpy(multimask_min, all_iou):
    y_true, masks, iou_pred = random_batch(3, b=5)
    loss = losses.SAMLoss(
        multimask_min=multimask_min, supervise_all_iou=all_iou, reduction=None
    )
    y_pred = {"masks": masks, "iou_pred": iou_pred}
    expected = np_sam_loss(y_true, masks, iou_pred, multimask_min, all_iou)
    helpers.assert_close(loss(y_true, y_pred), expected, LOSS_RTOL, "sam")
    # (B, 1, H, W) ground truth is the same; the default reduction is the
    # batch mean.
    helpers.assert_close(
        loss(y_true[:, None], y_pred), expected, LOSS_RTOL, "(B, 1, H, W)"
    )
    mean = losses.SAMLoss(
        multimask_min=multimask_min, supervise_all_iou=all_iou
    )(y_true, y_pred)
    helpers.assert_close(mean, expected.mean(), LOSS_RTOL, "mean")


def test_min_selection_picks_the_matching_mask():
    y_true, masks, iou_pred = random_batch(4, b=4)
    # Plant the ground truth (as confident logits) at a different index in
    # each example: that mask has the lowest loss and is chosen. (Logits
    # +-3, not larger: a float32 dice loss near 0 loses relative precision.)
    for b, k in enumerate([0, 3, 1, 2]):
        masks[b, k] = np.where(y_true[b] > 0, 3.0, -3.0)
    loss = losses.SAMLoss(reduction=None)
    per_example = helpers.to_numpy(
        loss(y_true, {"masks": masks, "iou_pred": iou_pred})
    )
    chosen = [(0, 0), (1, 3), (2, 1), (3, 2)]
    t = y_true[:, None]
    for b, k in chosen:
        mask_part = 20 * np_focal(t[b], masks[b, k]) + np_dice(
            t[b], masks[b, k]
        )
        expected = mask_part + (iou_pred[b, k] - 1.0) ** 2  # actual IoU 1
        np.testing.assert_allclose(per_example[b], expected[0], rtol=1e-5)


def _grad(fn, *arrays):
    """Gradients of the scalar `fn(*tensors)` w.r.t. each input array."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grads = jax.grad(fn, argnums=tuple(range(len(arrays))))(*arrays)
        return [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.Variable(a) for a in arrays]
        with tf.GradientTape() as tape:
            value = fn(*tensors)
        return [g.numpy() for g in tape.gradient(value, tensors)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    fn(*tensors).backward()
    return [t.grad.numpy() for t in tensors]


def test_gradient_flows_only_through_the_chosen_mask():
    y_true, masks, iou_pred = random_batch(5, b=2)
    masks[0, 2] = np.where(y_true[0] > 0, 8.0, -8.0)
    masks[1, 1] = np.where(y_true[1] > 0, 8.0, -8.0)
    loss = losses.SAMLoss()

    def fn(m, i):
        return loss(y_true, {"masks": m, "iou_pred": i})

    g_masks, g_iou = _grad(fn, masks, iou_pred)
    for b, k in ((0, 2), (1, 1)):
        others = [j for j in range(4) if j != k]
        assert np.all(g_masks[b, others] == 0)
        assert np.any(g_masks[b, k] != 0)
        assert np.all(g_iou[b, others] == 0)
        # d/dp (p - 1)^2 / B with actual IoU 1.
        np.testing.assert_allclose(
            g_iou[b, k], (iou_pred[b, k] - 1.0), rtol=1e-5
        )
    # The IoU target carries no gradient: with only the IoU term, the masks
    # get none.
    iou_only = losses.SAMLoss(focal_weight=0.0, dice_weight=0.0)
    g_masks, _ = _grad(
        lambda m, i: iou_only(y_true, {"masks": m, "iou_pred": i}),
        masks,
        iou_pred,
    )
    assert np.all(g_masks == 0)


def test_resize_masks_area_matches_numpy():
    rng = np.random.default_rng(6)
    masks = rng.uniform(size=(2, 3, 16, 24)).astype("float32")
    expected = masks.reshape(2, 3, 4, 4, 6, 4).mean(axis=(3, 5))
    helpers.assert_close(
        losses.resize_masks(masks, (4, 6)), expected, LOSS_RTOL, "area"
    )


def test_resize_masks_bilinear_keeps_constants():
    masks = np.full((2, 15, 10), 0.75, "float32")
    out = helpers.to_numpy(losses.resize_masks(masks, (6, 7)))
    assert out.shape == (2, 6, 7)
    np.testing.assert_allclose(out, 0.75, rtol=1e-6)


def torch_upsample(x, size):
    """Independent reference: PyTorch's bilinear resize (float64)."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor(np.asarray(x, np.float64))
    lead = x.shape[:-2]
    out = F.interpolate(
        x.reshape(-1, 1, *x.shape[-2:]),
        size=size,
        mode="bilinear",
        align_corners=False,
    )
    return out.reshape(*lead, *size).numpy()


@pytest.mark.parametrize("size", [(24, 30), (12, 10), (17, 23)])
def test_upsample_logits_matches_torch_interpolate(size):
    _, masks, _ = random_batch(5, b=2, t=3, h=12, w=10)
    helpers.assert_close(
        losses.upsample_logits(masks, size),
        torch_upsample(masks, size),
        1e-5,
        f"upsample to {size}",
    )


@pytest.mark.parametrize("factor", [2, 4])
def test_sam_loss_with_ground_truth_finer_than_the_logits(factor):
    """Ground truth at `factor` x the logits' size: the loss is that of the
    bilinearly upsampled logits (what the predictor thresholds)."""
    rng = np.random.default_rng(6)
    _, masks, iou_pred = random_batch(6, b=4, h=8, w=6)
    y_true = (rng.uniform(size=(4, 8 * factor, 6 * factor)) > 0.6).astype(
        "float32"
    )
    up = torch_upsample(masks, (8 * factor, 6 * factor))
    for multimask_min in (True, False):
        loss = losses.SAMLoss(multimask_min=multimask_min, reduction=None)
        helpers.assert_close(
            loss(y_true, {"masks": masks, "iou_pred": iou_pred}),
            np_sam_loss(y_true, up, iou_pred, multimask_min),
            LOSS_RTOL,
            f"x{factor}, multimask_min={multimask_min}",
        )
    # Not an integer multiple, or coarser: refused, naming the sizes.
    loss = losses.SAMLoss()
    y_pred = {"masks": masks, "iou_pred": iou_pred}
    for bad in (y_true[:, :-1], y_true[:, :4, :3]):
        with pytest.raises(ValueError, match="integer multiple"):
            loss(bad, y_pred)


def test_sam_loss_config_round_trip():
    loss = losses.SAMLoss(
        focal_weight=10.0, iou_weight=0.5, supervise_all_iou=True, name="x"
    )
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, losses.SAMLoss)
    assert clone.get_config() == loss.get_config()
    y_true, masks, iou_pred = random_batch(7)
    y_pred = {"masks": masks, "iou_pred": iou_pred}
    np.testing.assert_array_equal(
        helpers.to_numpy(clone(y_true, y_pred)),
        helpers.to_numpy(loss(y_true, y_pred)),
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(focal_weight=-1.0), "focal_weight"),
        (dict(dice_weight=float("nan")), "dice_weight"),
        (dict(iou_weight=-0.1), "iou_weight"),
        (dict(focal_gamma=-2.0), "focal_gamma"),
        (dict(focal_alpha=1.5), "focal_alpha"),
    ],
)
def test_sam_loss_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.SAMLoss(**kwargs)


def test_sam_loss_rejects_bad_inputs():
    y_true, masks, iou_pred = random_batch(8)
    loss = losses.SAMLoss()
    with pytest.raises(ValueError, match="y_pred"):
        loss(y_true, masks)
    with pytest.raises(ValueError, match="y_pred"):
        loss(y_true, {"masks": masks})
    with pytest.raises(ValueError, match="spatial size"):
        loss(y_true[:, :6], {"masks": masks, "iou_pred": iou_pred})
    with pytest.raises(ValueError, match="y_true"):
        loss(y_true[:, None, None], {"masks": masks, "iou_pred": iou_pred})
    with pytest.raises(ValueError, match="size"):
        losses.resize_masks(masks, (0, 3))


# -- fit() -------------------------------------------------------------------

ENCODER = helpers.TINY_64_ENCODER
PROMPT = helpers.TINY_64_PROMPT
DECODER = helpers.TINY_64_DECODER


# Training end to end is slow to trace: `make test` runs these variants on
# one backend; on all three, fit() of the whole model with a refinement
# round (test_fit_with_input_resolution_targets_and_refinement), beside the
# per-backend gradient and fit checks of the layers in tests/layers.
@pytest.mark.integration
@pytest.mark.parametrize("freeze_image_encoder", [True, False])
def test_fit_lowers_the_loss(freeze_image_encoder):
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    model.build()
    model.image_encoder.trainable = not freeze_image_encoder
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.SAMLoss())
    # One fixed batch of 8 (the dataset has one batch): 20 steps on it.
    data = ShapesDataset(8, 8, seed=0, image_size=(64, 64), input_size=64)
    x, y = data[0]
    encoder_before = [w.copy() for w in model.image_encoder.get_weights()]
    start = time.perf_counter()
    before = model.evaluate(data, verbose=0)  # through the PyDataset
    model.fit(x, y, batch_size=8, epochs=20, verbose=0)
    after = model.evaluate(x, y, batch_size=8, verbose=0)
    print(
        f"{keras.backend.backend()} frozen={freeze_image_encoder}: loss "
        f"{before:.4f} -> {after:.4f} ({after / before:.3f}), "
        f"{time.perf_counter() - start:.1f} s"
    )
    # Measured (before -> after): JAX 3.116 -> 1.372 frozen, -> 1.307 not;
    # torch 3.350 -> 1.439 / 1.308; TensorFlow 3.386 -> 1.634 / 1.450:
    # ratios 0.39-0.48. (Backends draw different initial weights.)
    assert after < 0.7 * before, (before, after)
    encoder_after = model.image_encoder.get_weights()
    unchanged = [
        np.array_equal(a, b)
        for a, b in zip(encoder_before, encoder_after, strict=True)
    ]
    assert all(unchanged) == freeze_image_encoder


def test_sam_loss_with_several_prompts_per_image():
    rng = np.random.default_rng(3)
    y_true = (rng.random((2, 3, 8, 8)) > 0.5).astype("float32")
    masks = rng.normal(size=(2, 3, 4, 8, 8)).astype("float32")
    iou_pred = rng.random((2, 3, 4)).astype("float32")
    loss = losses.SAMLoss(reduction=None)
    per_prompt = keras.ops.convert_to_numpy(
        loss(y_true, {"masks": masks, "iou_pred": iou_pred})
    )
    flat = keras.ops.convert_to_numpy(
        loss(
            y_true.reshape(6, 8, 8),
            {
                "masks": masks.reshape(6, 4, 8, 8),
                "iou_pred": iou_pred.reshape(6, 4),
            },
        )
    )
    assert per_prompt.shape == (2, 3)
    np.testing.assert_allclose(per_prompt.reshape(6), flat, rtol=1e-6)
    with pytest.raises(ValueError, match="K prompts per image"):
        loss(y_true[:, :2], {"masks": masks, "iou_pred": iou_pred})


@pytest.mark.integration  # K per image on every backend: test_refinement.py
def test_fit_with_several_prompts_per_image():
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.SAMLoss())
    data = ShapesDataset(
        4, 4, seed=0, image_size=(64, 64), input_size=64, prompts_per_image=4
    )
    x, y = data[0]
    before = model.evaluate(x, y, batch_size=4, verbose=0)
    model.fit(x, y, batch_size=4, epochs=20, verbose=0)
    after = model.evaluate(x, y, batch_size=4, verbose=0)
    print(f"{keras.backend.backend()}: loss {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before, (before, after)


def test_fit_with_input_resolution_targets_and_refinement():
    """Ground truth at the input's 64x64 pixels (the logits are 16x16):
    fit() with a correction-click round (drawn on the 64x64 grid) lowers
    the loss on a fixed batch."""
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    model.build()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=losses.SAMLoss(),
        refinement_iterations=1,
    )
    data = ShapesDataset(
        4, 4, seed=0, image_size=(64, 64), input_size=64, mask_size=64,
        prompts_per_image=2,
    )  # fmt: skip
    x, y = data[0]
    assert y.shape == (4, 2, 64, 64)
    before = model.evaluate(x, y, batch_size=4, verbose=0)
    model.fit(x, y, batch_size=4, epochs=20, verbose=0)
    after = model.evaluate(x, y, batch_size=4, verbose=0)
    print(f"{keras.backend.backend()}: loss {before:.4f} -> {after:.4f}")
    # Measured: JAX 3.088 -> 1.318, torch 3.316 -> 1.300, TensorFlow
    # 3.637 -> 1.464 (ratios 0.39-0.43).
    assert after < 0.7 * before, (before, after)
