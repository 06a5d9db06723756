"""Iterative refinement: the correction clicks and fed-back masks of SAM's
interactive training.

SAM's training (Kirillov et al., "Segment Anything", appendix A) simulates
an interactive session: after the first prompt, each further round adds
one click sampled uniformly from the error region of the previous
prediction (a foreground click on a missed pixel, a background click on a
wrong one) and feeds the previous prediction's mask logits back as the
mask prompt. So that the model also learns to refine its own mask, SAM
adds rounds with no new click: one at a random position among the others
and one always last (8 click rounds + 2 such rounds in the paper).
`keras_sam.SAM.compile(..., refinement_iterations=n,
mask_only_iterations=m)` trains that way; this module holds the per-round
steps, in `keras.ops` so they run inside the compiled training step of
every backend.
"""

from keras import ops
from keras import random


def is_ambiguous(labels, has_boxes: bool = False, has_masks: bool = False):
    """True where a prompt is one click and nothing else.

    SAM answers such a prompt with its three multimask outputs; any other
    prompt (a box, several clicks, a click with a mask prompt, as in every
    refinement round) with the single-mask output 0 ("more than one
    prompt", SAM's appendix A).

    Args:
        labels: `(B, N)` point labels (1 foreground, 0 background, -1
            padding, 2/3 box corners).
        has_boxes: whether a `boxes` prompt comes with the points.
        has_masks: whether a `masks` prompt comes with the points.

    Returns:
        bool `(B,)`.
    """
    clicks = ops.sum(
        ops.cast(ops.logical_or(labels == 0, labels == 1), "int32"), axis=-1
    )
    corners = ops.any(labels >= 2, axis=-1)
    ambiguous = ops.logical_and(clicks == 1, ops.logical_not(corners))
    return ops.zeros_like(ambiguous) if has_boxes or has_masks else ambiguous


def chosen_mask(masks, iou_pred, ambiguous):
    """The mask SAM passes on: the highest-scored multimask output for an
    ambiguous prompt, output 0 otherwise.

    Args:
        masks: `(B, 1 + n, h, w)` decoder logits.
        iou_pred: `(B, 1 + n)` predicted IoUs.
        ambiguous: bool `(B,)`, see `is_ambiguous`.

    Returns:
        `(B, h, w)` logits.
    """
    best = ops.argmax(iou_pred[:, 1:], axis=-1) + 1  # (B,)
    index = ops.where(ambiguous, best, ops.zeros_like(best))
    index = ops.reshape(ops.cast(index, "int32"), (-1, 1, 1, 1))
    return ops.take_along_axis(masks, index, axis=1)[:, 0]


def sample_correction_points(logits, targets, input_image_size, seed=None):
    """One correction click per mask, uniform over the error region.

    A pixel is wrong where `logits > 0` disagrees with `targets > 0.5`. The
    click is the centre of a wrong pixel drawn uniformly, labelled 1 (a
    missed foreground pixel) or 0 (a false foreground pixel); a mask with no
    wrong pixel gets the padding point `(0, 0)` with label -1.

    Args:
        logits: `(B, h, w)` mask logits (the decoder's low-res masks).
        targets: `(B, h, w)` ground truth in {0, 1} on the same grid.
        input_image_size: `(H, W)` of the model input; pixel `(i, j)` of the
            grid becomes the click `((j + 0.5) * W / w, (i + 0.5) * H / h)`
            in the prompt encoder's frame.
        seed: a `keras.random.SeedGenerator` (inside compiled training) or
            an int.

    Returns:
        `(points, labels)`: float32 `(B, 1, 2)` `(x, y)` and int32 `(B, 1)`.
    """
    _, h, w = tuple(logits.shape)
    truth = ops.reshape(targets > 0.5, (-1, h * w))
    wrong = ops.not_equal(ops.reshape(logits > 0, (-1, h * w)), truth)
    draw = random.uniform(ops.shape(wrong), seed=seed)  # [0, 1)
    score = ops.where(wrong, draw, -1.0)
    index = ops.argmax(score, axis=-1)  # (B,)
    found = ops.max(score, axis=-1) >= 0.0
    label = ops.take_along_axis(
        ops.cast(truth, "int32"), ops.reshape(index, (-1, 1)), axis=1
    )[:, 0]
    label = ops.where(found, label, -ops.ones_like(label))
    index = ops.cast(index, "int32")
    scale_y = float(input_image_size[0]) / h
    scale_x = float(input_image_size[1]) / w
    x = (ops.cast(index % w, "float32") + 0.5) * scale_x
    y = (ops.cast(index // w, "float32") + 0.5) * scale_y
    points = ops.where(found[:, None], ops.stack([x, y], axis=-1), 0.0)
    return points[:, None, :], ops.cast(label, "int32")[:, None]


def mask_only_rounds(batch_size, click_rounds: int, mask_only: int, seed=None):
    """Which refinement rounds add no click, per example.

    There are `click_rounds + mask_only` rounds. With `mask_only > 0` the
    last round adds no click for every example, and each example gets
    `mask_only - 1` more such rounds at positions drawn uniformly (without
    replacement) among the earlier rounds (SAM's recipe: `mask_only=2`).

    Args:
        batch_size: number of examples `B` (an int or a scalar tensor).
        click_rounds: int >= 0, rounds that add a correction click.
        mask_only: int >= 0, rounds that only feed the previous mask back.
        seed: a `keras.random.SeedGenerator` or an int.

    Returns:
        bool `(click_rounds + mask_only, B)`: True where the round adds the
        padding point `(0, 0)` / -1 instead of a correction click.
    """
    rounds = click_rounds + mask_only
    if mask_only == 0:
        return ops.zeros((rounds, batch_size), "bool")
    last = ops.ones((1, batch_size), "bool")
    if rounds == 1:
        return last
    draw = random.uniform((rounds - 1, batch_size), seed=seed)
    rank = ops.argsort(ops.argsort(draw, axis=0), axis=0)  # 0..rounds-2
    return ops.concatenate([rank < mask_only - 1, last], axis=0)
