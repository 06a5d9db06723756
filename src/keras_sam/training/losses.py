"""SAM's training objective: focal + dice on mask logits, MSE on IoU.

Kirillov et al. (2023, section 3 and appendix A) supervise the mask logits
with a linear combination of focal loss and dice loss in a 20:1 ratio, train
the IoU head with the mean squared error between the predicted IoU and the
IoU of the predicted (thresholded) mask with the ground truth, added with
weight 1, and, for ambiguous prompts, backpropagate only from the predicted
mask with the lowest mask loss.

The functions take the ground truth and the logits at the same size. The
decoder's masks are low-resolution, `4x` the image embedding (256x256 for
SAM). `SAMLoss` takes the ground truth either at that size (`resize_masks`,
or `keras_sam.ShapesDataset`, which yields it so by default) or at
an integer multiple of it, e.g. the model input's resolution: it then
upsamples the logits to the ground truth's size first (`upsample_logits`,
the predictor's bilinear resize), so that the loss sees the boundaries of
the masks users get rather than those of a coarse grid (SAM 2's training
computes its losses on upsampled masks too).
"""

import keras
import numpy as np
from keras import ops

from keras_sam.inference.transforms import bilinear_matrix


def _pixel_axes(x) -> tuple[int, int]:
    rank = len(x.shape)
    return (rank - 2, rank - 1)


def sigmoid_focal_loss(y_true, logits, alpha: float = 0.25, gamma: float = 2.0):
    """Sigmoid focal loss of each mask, averaged over its pixels.

    `FL = alpha_t * (1 - p_t) ** gamma * BCE(logits, y_true)` with
    `p = sigmoid(logits)`, `p_t = p y + (1 - p)(1 - y)` and
    `alpha_t = alpha y + (1 - alpha)(1 - y)` (Lin et al., RetinaNet). The
    cross-entropy is taken from the logits (stable for large logits).

    Args:
        y_true: `(..., H, W)` targets in [0, 1] (binary masks); broadcasts
            against `logits` (e.g. `(B, 1, H, W)` against `(B, T, H, W)`).
        logits: `(..., H, W)` mask logits.
        alpha: Weight of the foreground pixels in [0, 1]; a negative value
            turns the weighting off (torchvision's convention).
        gamma: Focusing exponent (>= 0); 0 gives the (weighted) BCE.

    Returns:
        float32 `(...)`: the loss of each mask, mean over `H, W`.
    """
    x = ops.cast(logits, "float32")
    t = ops.cast(y_true, "float32")
    # BCE with logits: max(x, 0) - x t + log(1 + exp(-|x|)).
    ce = ops.maximum(x, 0.0) - x * t + ops.log1p(ops.exp(-ops.abs(x)))
    p = ops.sigmoid(x)
    p_t = p * t + (1.0 - p) * (1.0 - t)
    loss = ce * ops.power(1.0 - p_t, gamma)
    if alpha >= 0:
        loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
    return ops.mean(loss, axis=_pixel_axes(loss))


def dice_loss(y_true, logits, smooth: float = 1.0):
    """Soft dice loss of each mask.

    `1 - (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth)` over the
    pixels of each mask, with `p = sigmoid(logits)` (Milletari et al.; the
    DETR / SAM 2 form with `smooth = 1`).

    Args:
        y_true: `(..., H, W)` targets in [0, 1]; broadcasts against `logits`.
        logits: `(..., H, W)` mask logits.
        smooth: Added to numerator and denominator (> 0 keeps empty masks
            finite).

    Returns:
        float32 `(...)`: the loss of each mask, in [0, 1).
    """
    p = ops.sigmoid(ops.cast(logits, "float32"))
    t = ops.cast(y_true, "float32")
    t = ops.broadcast_to(t, ops.shape(p))
    axes = _pixel_axes(p)
    numerator = 2.0 * ops.sum(p * t, axis=axes) + smooth
    denominator = ops.sum(p, axis=axes) + ops.sum(t, axis=axes) + smooth
    return 1.0 - numerator / denominator


def mask_iou(y_true, logits, threshold: float = 0.0):
    """IoU of each thresholded predicted mask with its ground truth.

    The prediction is `logits > threshold`, the ground truth `y_true > 0.5`.
    The IoU is `|pred & gt| / max(|pred | gt|, 1)`, so two empty masks give
    0 (as SAM 2's training code). It is a target, not a loss: no gradient
    flows through it (`ops.stop_gradient`).

    Args:
        y_true: `(..., H, W)` targets in [0, 1]; broadcasts against `logits`.
        logits: `(..., H, W)` mask logits.
        threshold: Logit threshold of the prediction (SAM's is 0.0).

    Returns:
        float32 `(...)` IoUs in [0, 1].
    """
    logits = ops.stop_gradient(ops.convert_to_tensor(logits))
    y_true = ops.stop_gradient(ops.convert_to_tensor(y_true))
    pred = ops.cast(logits > threshold, "float32")
    gt = ops.cast(y_true > 0.5, "float32")
    gt = ops.broadcast_to(gt, ops.shape(pred))
    axes = _pixel_axes(pred)
    intersection = ops.sum(pred * gt, axis=axes)
    union = ops.sum(pred, axis=axes) + ops.sum(gt, axis=axes) - intersection
    return ops.stop_gradient(intersection / ops.maximum(union, 1.0))


def upsample_logits(logits, size: tuple[int, int]):
    """Bilinear resize of mask logits `(..., h, w)` to `size = (H, W)`.

    The same map as the predictor's first post-processing step (PyTorch's
    `F.interpolate(mode="bilinear", align_corners=False)`, no antialias),
    written as two constant matrices (`transforms.bilinear_matrix`):
    differentiable and identical on every backend. Thresholding the result
    at 0 gives the mask `SAMPredictor` returns for an image of the input's
    size.

    Args:
        logits: `(..., h, w)` logits with a static spatial size.
        size: `(H, W)` of the output.

    Returns:
        float32 `(..., H, W)`.
    """
    logits = ops.cast(logits, "float32")
    shape = tuple(logits.shape)
    h, w = (int(s) for s in shape[-2:])
    big_h, big_w = (int(s) for s in size)
    if (big_h, big_w) == (h, w):
        return logits
    rows = bilinear_matrix(h, big_h).astype(np.float32)  # (H, h)
    cols = bilinear_matrix(w, big_w).T.astype(np.float32)  # (w, W)
    # Plain batched matmuls on (N, h, w): TensorFlow's compiled training
    # step does not support the equivalent ellipsis einsum.
    flat = ops.reshape(logits, (-1, h, w))
    flat = ops.matmul(ops.convert_to_tensor(rows)[None], flat)  # (N, H, w)
    flat = ops.matmul(flat, ops.convert_to_tensor(cols)[None])  # (N, H, W)
    lead = tuple(ops.shape(logits))[:-2]  # dynamic where unknown
    return ops.reshape(flat, (*lead, big_h, big_w))


def resize_masks(masks, size: tuple[int, int]):
    """Resize masks `(..., H, W)` to `size = (h, w)`.

    When `H` and `W` are multiples of `h` and `w` (e.g. the padded model
    input to the decoder's low-res size, a 4x reduction), each output pixel
    is the mean of its `H/h x W/w` block (area interpolation, exact and the
    same on every backend). Otherwise bilinear interpolation, antialiased
    when shrinking (`keras.ops.image.resize`; backends may differ slightly at
    the borders). Threshold the result at 0.5 for binary targets.

    Args:
        masks: `(..., H, W)` masks or logits (at least rank 2).
        size: `(h, w)` of the output.

    Returns:
        float32 `(..., h, w)`.
    """
    masks = ops.cast(masks, "float32")
    shape = tuple(masks.shape)
    if len(shape) < 2 or None in shape:
        raise ValueError(
            "`masks` must have a static shape of rank >= 2 `(..., H, W)`. "
            f"Received: masks.shape={shape}"
        )
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(
            f"`size` must be two positive ints. Received: size={size}"
        )
    big_h, big_w = shape[-2:]
    lead = shape[:-2]
    if big_h % h == 0 and big_w % w == 0:
        fh, fw = big_h // h, big_w // w
        blocks = ops.reshape(masks, (-1, h, fh, w, fw))
        return ops.reshape(ops.mean(blocks, axis=(2, 4)), (*lead, h, w))
    flat = ops.reshape(masks, (-1, big_h, big_w, 1))
    resized = ops.image.resize(
        flat,
        (h, w),
        interpolation="bilinear",
        antialias=h < big_h or w < big_w,
        data_format="channels_last",
    )
    return ops.reshape(resized, (*lead, h, w))


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMLoss(keras.losses.Loss):
    """SAM's training loss on the decoder's output dict.

    For each example and each of its `T` predicted masks, the mask loss is
    `focal_weight * focal + dice_weight * dice` (SAM: 20:1) and the IoU loss
    `(iou_pred - IoU(mask > 0, ground truth)) ** 2`. With `multimask_min`,
    only the mask with the lowest mask loss is kept (SAM's "backpropagate
    only the minimum loss over masks"); its mask loss plus `iou_weight`
    times the IoU loss of the same mask is the example's loss. The IoU
    head is thus trained on the chosen mask only: SAM 2's training code
    does this "to be consistent with SAM"; `supervise_all_iou=True` trains
    it on the mean over all `T` masks instead (SAM 2's option). Without
    `multimask_min`, mask and IoU losses are averaged over the `T` masks.

    The minimum runs over the masks given. The decoder returns `1 + n`
    masks (index 0 the single-mask output, `1..n` the multimask outputs);
    SAM uses the `n` multimask outputs for a single ambiguous point and
    output 0 for other prompts: slice `y_pred` to follow that exactly.
    Given all `1 + n` masks, the minimum runs over all of them.

    **With `fit()`**: Keras applies a compiled loss to each output tensor
    separately, but this loss needs the masks and the IoU predictions
    together (the IoU target comes from the predicted masks). It therefore
    takes the decoder's whole dict, and the model hands it over in its
    `compute_loss`; with this override, `model.compile(loss=SAMLoss())`
    and `model.fit()` work on every backend:

        def compute_loss(self, x=None, y=None, y_pred=None,
                         sample_weight=None, training=True):
            if isinstance(self.loss, SAMLoss):
                return self.loss(y, y_pred, sample_weight)
            return super().compute_loss(
                x, y, y_pred, sample_weight, training=training)

    Called directly, `loss(y_true, model(x))` works with any model that
    returns the dict (custom training loops).

    Args:
        focal_weight: Weight of the focal loss (SAM: 20).
        dice_weight: Weight of the dice loss (SAM: 1).
        iou_weight: Weight of the IoU MSE (SAM: 1).
        multimask_min: Keep only the lowest-loss mask of each example.
        supervise_all_iou: Train the IoU head on all masks, not only the
            chosen one.
        focal_alpha: Foreground weight of the focal loss.
        focal_gamma: Focusing exponent of the focal loss.
        name, reduction, dtype: as `keras.losses.Loss`; the default
            reduction averages the per-example losses over the batch.

    Call arguments:
        y_true: `(B, H, W)` or `(B, 1, H, W)` ground-truth masks in {0, 1},
            at the decoder's low-res size `(4He, 4We)` or an integer
            multiple of it (the logits are then upsampled to it first,
            see `upsample_logits`).
        y_pred: dict with `"masks"`: `(B, T, H, W)` logits and
            `"iou_pred"`: `(B, T)` predicted IoUs (the decoder's output).
        With `K` prompts per image (`keras_sam.SAM`'s call), `y_true`
        `(B, K, H, W)`, masks `(B, K, T, H, W)`, IoUs `(B, K, T)`; each
        prompt is one example.

    Returns:
        float32 scalar (reduced), or `(B,)` (`(B, K)`) per-example losses
        with `reduction=None`.

    Raises:
        ValueError: negative weights; `y_pred` not such a dict; `y_true`
            of the wrong rank or spatial size.

    Example:
    >>> loss = keras_sam.SAMLoss()
    >>> y_pred = {"masks": np.zeros((2, 4, 8, 8)), "iou_pred": np.zeros((2, 4))}
    >>> value = loss(np.ones((2, 8, 8)), y_pred)

    Reference:
        Kirillov et al., "Segment Anything", ICCV 2023 (section 3,
        appendix A); Ravi et al., "SAM 2", 2024 (training losses).
    """

    def __init__(
        self,
        *,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        multimask_min: bool = True,
        supervise_all_iou: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        name: str = "sam_loss",
        reduction: str | None = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for arg, value in (
            ("focal_weight", focal_weight),
            ("dice_weight", dice_weight),
            ("iou_weight", iou_weight),
            ("focal_gamma", focal_gamma),
        ):
            if not float(value) >= 0:
                raise ValueError(
                    f"`{arg}` must be a non-negative number. Received: "
                    f"{arg}={value}"
                )
        if float(focal_alpha) > 1:
            raise ValueError(
                "`focal_alpha` must be in [0, 1] (or negative for no "
                f"weighting). Received: focal_alpha={focal_alpha}"
            )
        self.focal_weight = float(focal_weight)
        self.dice_weight = float(dice_weight)
        self.iou_weight = float(iou_weight)
        self.multimask_min = bool(multimask_min)
        self.supervise_all_iou = bool(supervise_all_iou)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    @staticmethod
    def _unpack(y_true, y_pred):
        if not (
            isinstance(y_pred, dict) and {"masks", "iou_pred"} <= set(y_pred)
        ):
            kind = sorted(y_pred) if isinstance(y_pred, dict) else type(y_pred)
            raise ValueError(
                "`y_pred` must be the decoder's dict with keys 'masks' "
                "(B, T, H, W) and 'iou_pred' (B, T). Received: y_pred of "
                f"{kind}"
            )
        masks, iou_pred = y_pred["masks"], y_pred["iou_pred"]
        mask_shape = tuple(masks.shape)
        true_shape = tuple(y_true.shape)
        if len(mask_shape) != 4:
            raise ValueError(
                "`y_pred['masks']` must have rank 4 (B, T, H, W). Received: "
                f"shape={mask_shape}"
            )
        if len(true_shape) == 3:
            y_true = y_true[:, None]  # (B, 1, H, W)
        elif len(true_shape) != 4 or true_shape[1] not in (1, None):
            raise ValueError(
                "`y_true` must be (B, H, W) or (B, 1, H, W) masks. "
                f"Received: y_true.shape={true_shape}"
            )
        for axis in (-2, -1):
            got, want = true_shape[axis], mask_shape[axis]
            if None in (got, want):
                continue
            if got < want or got % want:
                raise ValueError(
                    "`y_true` must have the spatial size of the predicted "
                    "masks (the decoder's low-res size; see "
                    "`keras_sam.training.losses.resize_masks`) or an integer "
                    "multiple of it. Received: "
                    f"y_true.shape={true_shape}, masks.shape={mask_shape}"
                )
        if None not in true_shape[-2:] and true_shape[-2:] != mask_shape[-2:]:
            masks = upsample_logits(masks, true_shape[-2:])
        return y_true, masks, iou_pred

    def call(self, y_true, y_pred):
        if isinstance(y_pred, dict) and len(tuple(y_pred["masks"].shape)) == 5:
            return self._call_per_image(y_true, y_pred)
        y_true, masks, iou_pred = self._unpack(y_true, y_pred)
        focal = sigmoid_focal_loss(
            y_true, masks, self.focal_alpha, self.focal_gamma
        )  # (B, T)
        dice = dice_loss(y_true, masks)  # (B, T)
        mask_loss = self.focal_weight * focal + self.dice_weight * dice
        iou_error = ops.square(
            ops.cast(iou_pred, "float32") - mask_iou(y_true, masks)
        )  # (B, T)
        if not self.multimask_min:
            return ops.mean(mask_loss, axis=1) + self.iou_weight * ops.mean(
                iou_error, axis=1
            )
        # Gradients flow only through the chosen mask (index selection).
        best = ops.expand_dims(ops.argmin(mask_loss, axis=1), 1)  # (B, 1)
        chosen = ops.take_along_axis(mask_loss, best, axis=1)[:, 0]  # (B,)
        if self.supervise_all_iou:
            iou_term = ops.mean(iou_error, axis=1)
        else:
            iou_term = ops.take_along_axis(iou_error, best, axis=1)[:, 0]
        return chosen + self.iou_weight * iou_term

    def _call_per_image(self, y_true, y_pred):
        """`K` prompts per image: `(B, K, T, H, W)` masks, `(B, K, T)`
        IoUs, `(B, K, H, W)` truth -> `(B, K)` losses."""
        masks, iou_pred = y_pred["masks"], y_pred["iou_pred"]
        _, per_image, count, h, w = tuple(masks.shape)
        true_shape = tuple(y_true.shape)
        if len(true_shape) not in (4, 5) or true_shape[1] != per_image:
            raise ValueError(
                "With K prompts per image (masks (B, K, T, H, W)), `y_true` "
                "must be (B, K, H, W) or (B, K, 1, H, W). Received: "
                f"y_true.shape={true_shape}, masks.shape={tuple(masks.shape)}"
            )
        losses = self.call(
            ops.reshape(y_true, (-1, *true_shape[-2:])),
            {
                "masks": ops.reshape(masks, (-1, count, h, w)),
                "iou_pred": ops.reshape(iou_pred, (-1, count)),
            },
        )
        return ops.reshape(losses, (-1, per_image))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "focal_weight": self.focal_weight,
                "dice_weight": self.dice_weight,
                "iou_weight": self.iou_weight,
                "multimask_min": self.multimask_min,
                "supervise_all_iou": self.supervise_all_iou,
                "focal_alpha": self.focal_alpha,
                "focal_gamma": self.focal_gamma,
            }
        )
        return config
