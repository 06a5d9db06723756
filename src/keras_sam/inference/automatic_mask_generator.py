"""Masks for a whole image from a grid of point prompts (SAM's "segment
everything" mode)."""

import bisect
import itertools
import math
import sys
from collections.abc import Callable

import numpy as np

from keras_sam import checks
from keras_sam.inference import amg_utils
from keras_sam.inference import transforms
from keras_sam.inference.predictor import MASK_THRESHOLD
from keras_sam.inference.predictor import SAMPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Full-resolution logits upsampled at once: bounds the memory of a batch to
# this many float32 pixels (128 MiB) whatever the image size.
_MAX_UPSAMPLED_PIXELS = 1 << 25

# Layer i has 4**i crops, one image encoder run each: 8 layers already make
# 87,381 crops (crops of 1/256 of the picture's side). Beyond that the crop
# list alone outgrows memory, so larger values are refused.
MAX_CROP_LAYERS = 8

# The steps of `generate` that remove masks, in order, as `last_stats`
# counts them: the thresholds by argument name, and the crop-edge filter.
REMOVAL_STEPS = (
    "pred_iou_thresh",
    "stability_score_thresh",
    "crop_edge",
    "box_nms_thresh",
    "crop_nms_thresh",
    "min_mask_region_area",
)


def _check_float(
    name: str, value, low=-math.inf, high=math.inf, high_open=False
) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    bad_high = number >= high if high_open else number > high
    if not math.isfinite(number) or number < low or bad_high:
        bracket = ")" if high_open else "]"
        interval = (
            "finite" if math.isinf(low) else f"in [{low}, {high}{bracket}"
        )
        raise ValueError(
            f"`{name}` must be a number {interval}. Received: {name}={value!r}"
        )
    return number


class SAMAutomaticMaskGenerator:
    """Generate masks for a whole image with SAM, as the official
    `SamAutomaticMaskGenerator`.

    A grid of foreground points covers the image and, optionally, layers of
    overlapping crops (layer i: `2**i x 2**i` crops, with the point grid
    scaled to each crop). For each crop the image encoder runs once on the
    crop; the points are decoded in batches, one prompt each, with three
    (multimask) outputs. Masks are kept if their predicted IoU exceeds
    `pred_iou_thresh` and their stability score reaches
    `stability_score_thresh`; masks whose box touches a crop edge that is
    not an image edge are dropped; duplicates within a crop are removed by
    box NMS on the predicted IoU, then duplicates between crops by box NMS
    that prefers smaller crops. Optionally, small holes and islands are
    removed from each mask and NMS runs again. Records come in the
    official order. Crops of the crop layers that hold no pixel (the last
    row or column of crops on pictures of a few pixels) or that are too
    elongated for the model are skipped.

    After each `generate`, `last_stats` says where the masks went (e.g.
    why a picture gave no record): a dict with `crops` (crops encoded),
    `crops_skipped`, `points` (point prompts decoded), `masks` (candidate
    masks: three per point), `removed` (a dict: masks removed by each step,
    in order: `pred_iou_thresh`, `stability_score_thresh`, `crop_edge`
    (masks touching an inner crop edge), `box_nms_thresh`,
    `crop_nms_thresh`, `min_mask_region_area` (the NMS after the small
    region removal)) and `kept` (records returned), with
    `masks == kept + sum(removed.values())`. It is None before the first
    `generate` and while one runs.

    Unlike the official generator, which keeps every full-resolution mask
    of a crop until the end, masks are run-length encoded as soon as a batch
    is filtered (and upsampled in chunks), so memory grows with the number
    of records, not with the image area times the number of points.

    Args:
        model: a `keras_sam.SAM`.
        points_per_side: points along each side of the grid of crop layer
            0 (`points_per_side**2` points). Exclusive with `point_grids`.
        points_per_batch: points decoded together.
        pred_iou_thresh: keep masks whose predicted IoU is above it; 0 or
            less turns the filter off. Predicted IoUs are unbounded
            regression outputs, so any finite value is accepted.
        stability_score_thresh: keep masks whose stability score is at
            least this, in `[0, 1]`; 0 turns the filter off.
        stability_score_offset: logit shift of the stability score, >= 0.
        box_nms_thresh: box IoU above which NMS drops a duplicate within a
            crop, in `[0, 1]`.
        crop_n_layers: number of crop layers beyond the whole image, at
            most `MAX_CROP_LAYERS` (8).
        crop_nms_thresh: box IoU above which NMS drops a duplicate between
            crops, in `[0, 1]`.
        crop_overlap_ratio: overlap of layer-1 crops as a fraction of the
            image's short side, in `[0, 1)`.
        crop_n_points_downscale_factor: crop layer i has
            `points_per_side / factor**i` points per side.
        point_grids: explicit grids, one `(N_i, 2)` array of x, y in
            `[0, 1]` per crop layer. Exclusive with `points_per_side`.
        min_mask_region_area: if > 0, fill holes and remove islands smaller
            than this many pixels, then run NMS again (needs SciPy, or
            OpenCV).
        output_mode: `"binary_mask"` (bool `(H, W)` arrays),
            `"uncompressed_rle"` (`{"size": [H, W], "counts": [...]}`) or
            `"coco_rle"` (COCO compressed RLE, needs pycocotools).
        progress: report progress over the point batches of a picture
            (all crops together; off by default). True prints a line on
            stderr ("point batch 7/20 (crop 2/5)"); a callable is called as
            `progress(done, total)` with `done = 0` before the first batch
            and after each batch, `total` the number of point batches of
            the picture over its crops.

    Call arguments (`generate`):
        image: uint8 `(H, W, 3)` RGB array.
        image_embedding: optional float32 `(1, He, We, C)`, the embedding
            of this whole image by this model (`SAMPredictor.
            get_image_embedding()` after `set_image(image)`, or one kept
            with `keras_sam.inference.embeddings`): the whole-image crop
            uses it instead of running the image encoder, with the same
            records. The crops of the crop layers are encoded as usual.
            Whether it belongs to this image and model is not checked.

    Returns (`generate`):
        A list of records, one per mask, each a dict: `segmentation` (in
        `output_mode`), `area` (int pixels), `bbox` (XYWH ints, width and
        height one less than the mask's extent as in the official code),
        `predicted_iou`, `point_coords` (`[[x, y]]`, image pixels),
        `stability_score`, `crop_box` (XYWH ints).

    Raises:
        ValueError: a bad argument (named in the message) or image.
        ImportError: `coco_rle` without pycocotools, `min_mask_region_area`
            without SciPy or OpenCV.

    Example:
    >>> generator = keras_sam.SAMAutomaticMaskGenerator(model)
    ... # doctest: +SKIP
    >>> records = generator.generate(image)  # doctest: +SKIP
    >>> records[0]["segmentation"].shape == image.shape[:2]  # doctest: +SKIP
    True

    Reference:
        Kirillov et al., "Segment Anything", ICCV 2023; the official
        `segment_anything/automatic_mask_generator.py`.
    """

    def __init__(
        self,
        model,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        progress: bool | Callable[[int, int], object] = False,
    ):
        if output_mode not in OUTPUT_MODES:
            raise ValueError(
                f"`output_mode` must be one of {OUTPUT_MODES}. Received: "
                f"output_mode={output_mode!r}"
            )
        self.crop_n_layers = checks.integer("crop_n_layers", crop_n_layers, 0)
        if self.crop_n_layers > MAX_CROP_LAYERS:
            raise ValueError(
                f"`crop_n_layers` must be at most {MAX_CROP_LAYERS}: crop "
                "layer i has 4**i crops, each encoded on its own "
                f"({4**MAX_CROP_LAYERS} in layer {MAX_CROP_LAYERS}, crops "
                f"1/{2**MAX_CROP_LAYERS} of the picture's side). Received: "
                f"crop_n_layers={crop_n_layers!r}"
            )
        self.crop_n_points_downscale_factor = checks.integer(
            "crop_n_points_downscale_factor",
            crop_n_points_downscale_factor,
            1,
        )
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "Exactly one of `points_per_side` and `point_grids` must be "
                f"given. Received: points_per_side={points_per_side!r}, "
                f"point_grids={'None' if point_grids is None else '[...]'}"
            )
        if points_per_side is not None:
            points_per_side = checks.integer(
                "points_per_side", points_per_side, 1
            )
            smallest = int(
                points_per_side
                / self.crop_n_points_downscale_factor**self.crop_n_layers
            )
            if smallest < 1:
                raise ValueError(
                    "`crop_n_points_downscale_factor` leaves no points in "
                    f"crop layer {self.crop_n_layers}. Received: "
                    "crop_n_points_downscale_factor="
                    f"{crop_n_points_downscale_factor}, points_per_side="
                    f"{points_per_side}, crop_n_layers={crop_n_layers}"
                )
            self.point_grids = amg_utils.build_all_layer_point_grids(
                points_per_side,
                self.crop_n_layers,
                self.crop_n_points_downscale_factor,
            )
        else:
            self.point_grids = self._check_point_grids(point_grids)
        self.points_per_side = points_per_side
        self.points_per_batch = checks.integer(
            "points_per_batch", points_per_batch, 1
        )
        self.pred_iou_thresh = _check_float("pred_iou_thresh", pred_iou_thresh)
        self.stability_score_thresh = _check_float(
            "stability_score_thresh", stability_score_thresh, 0.0, 1.0
        )
        self.stability_score_offset = _check_float(
            "stability_score_offset", stability_score_offset, 0.0
        )
        self.box_nms_thresh = _check_float(
            "box_nms_thresh", box_nms_thresh, 0.0, 1.0
        )
        self.crop_nms_thresh = _check_float(
            "crop_nms_thresh", crop_nms_thresh, 0.0, 1.0
        )
        self.crop_overlap_ratio = _check_float(
            "crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0, high_open=True
        )
        self.min_mask_region_area = _check_float(
            "min_mask_region_area", min_mask_region_area, 0.0
        )
        self.output_mode = output_mode
        if not (isinstance(progress, (bool, np.bool_)) or callable(progress)):
            raise ValueError(
                "`progress` must be a bool or a callable "
                f"`progress(done, total)`. Received: progress={progress!r}"
            )
        self.progress = progress if callable(progress) else bool(progress)
        self.last_stats = None
        # Fail now, not after minutes of decoding, if an extra is missing.
        if output_mode == "coco_rle":
            amg_utils.import_optional("pycocotools.mask", "pycocotools")
        if self.min_mask_region_area > 0:
            amg_utils.connected_components(np.zeros((1, 1), bool))
        self.predictor = SAMPredictor(model)

    def _check_point_grids(self, point_grids) -> list[np.ndarray]:
        if not hasattr(point_grids, "__iter__"):
            raise ValueError(
                "`point_grids` must be a list of (N, 2) arrays, one per crop "
                f"layer. Received: point_grids={point_grids!r}"
            )
        grids = []
        for grid in point_grids:
            try:
                grid = np.asarray(grid, np.float64)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    "`point_grids` must be a list of (N, 2) arrays. "
                    f"Received: point_grids containing {grid!r}"
                ) from e
            if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
                raise ValueError(
                    "`point_grids` must be a list of non-empty (N, 2) arrays. "
                    f"Received: a grid of shape {grid.shape}"
                )
            if not np.all(np.isfinite(grid)) or np.any((grid < 0) | (grid > 1)):
                raise ValueError(
                    "`point_grids` must hold x, y normalised to [0, 1]. "
                    f"Received: values in [{grid.min()}, {grid.max()}]"
                )
            grids.append(grid)
        if len(grids) < self.crop_n_layers + 1:
            raise ValueError(
                "`point_grids` must have one grid per crop layer, "
                f"crop_n_layers + 1 = {self.crop_n_layers + 1}. Received: "
                f"{len(grids)} grids"
            )
        return grids

    # -- generation ----------------------------------------------------------

    def generate(self, image, *, image_embedding=None) -> list[dict]:
        """Masks for `image`, uint8 `(H, W, 3)` RGB; see the class docs."""
        self.last_stats = None
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(
                "`image` must be a uint8 array (H, W, 3). Received: "
                f"image.dtype={image.dtype}"
            )
        if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(
                "`image` must have shape (H, W, 3) with H, W >= 1. Received: "
                f"image.shape={image.shape}"
            )
        long_side = max(self.predictor.image_size)
        transforms.check_preprocess_shape(
            image.shape[:2], long_side, f"image.shape={image.shape}"
        )
        if image_embedding is not None:
            # Checked (shape, finite) before any work; set again for the
            # whole-image crop.
            self.predictor.set_image_embedding(image_embedding, image.shape[:2])
            image_embedding = self.predictor.get_image_embedding()
            self.predictor.reset_image()
        stats = {
            "crops": 0,
            "crops_skipped": 0,
            "points": 0,
            "masks": 0,
            "removed": dict.fromkeys(REMOVAL_STEPS, 0),
            "kept": 0,
        }
        data = self._generate_masks(image, stats, image_embedding)
        size = image.shape[:2]
        if self.min_mask_region_area > 0:
            before = len(data["rles"])
            data = self._remove_small_regions(
                data, size, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
            removed = before - len(data["rles"])
            stats["removed"]["min_mask_region_area"] += removed
        records = self._records(data, size)
        stats["kept"] = len(records)
        self.last_stats = stats
        return records

    def _usable_crop(self, crop_box) -> bool:
        """Whether a crop holds a pixel and fits the model (crops of deep
        layers on pictures of a few pixels may hold none)."""
        x0, y0, x1, y1 = crop_box
        if x1 <= x0 or y1 <= y0:
            return False
        long_side = max(self.predictor.image_size)
        resized = transforms.preprocess_shape((y1 - y0, x1 - x0), long_side)
        return min(resized) >= 1

    def _generate_masks(
        self, image: np.ndarray, stats: dict, image_embedding=None
    ) -> dict:
        image_size = image.shape[:2]
        crop_boxes, layers = amg_utils.generate_crop_boxes(
            image_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        crops = [
            (box, layer)
            for box, layer in zip(crop_boxes, layers, strict=True)
            if self._usable_crop(box)
        ]
        stats["crops"] = len(crops)
        stats["crops_skipped"] = len(crop_boxes) - len(crops)
        progress = _Progress(
            [
                math.ceil(len(self.point_grids[layer]) / self.points_per_batch)
                for _, layer in crops
            ],
            self.progress,
        )
        try:
            parts = [
                self._process_crop(
                    image,
                    box,
                    layer,
                    progress,
                    stats,
                    image_embedding if layer == 0 else None,
                )
                for box, layer in crops
            ]
        finally:
            # Also on Ctrl-C or an error: the next line on stderr (the
            # command's "interrupted") must start on a line of its own.
            progress.close()
        data = _concat(parts, _KEYS)
        if len(crops) > 1:
            # Between crops, prefer masks from smaller crops (float32, as
            # the official `1 / box_area`).
            area = amg_utils.box_area(data["crop_boxes"]).astype(np.float32)
            scores = np.float32(1.0) / area
            keep = amg_utils.nms(data["boxes"], scores, self.crop_nms_thresh)
            stats["removed"]["crop_nms_thresh"] += len(data["rles"]) - len(keep)
            data = _take(data, keep)
        return data

    def _process_crop(
        self,
        image,
        crop_box,
        layer: int,
        progress,
        stats: dict,
        image_embedding=None,
    ) -> dict:
        x0, y0, x1, y1 = crop_box
        h, w = y1 - y0, x1 - x0
        if image_embedding is not None:  # layer 0: the whole image
            self.predictor.set_image_embedding(image_embedding, (h, w))
        else:
            self.predictor.set_image(image[y0:y1, x0:x1])
        points = self.point_grids[layer] * np.array([[w, h]])  # crop pixels
        parts = []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            parts.append(
                self._process_batch(batch, crop_box, image.shape, stats)
            )
            progress.step()
        self.predictor.reset_image()
        data = _concat(parts, _BATCH_KEYS)
        # Duplicates within the crop: the best predicted IoU wins.
        keep = amg_utils.nms(
            data["boxes"], data["iou_preds"], self.box_nms_thresh
        )
        stats["removed"]["box_nms_thresh"] += len(data["rles"]) - len(keep)
        data = _take(data, keep)
        data["crop_boxes"] = np.tile(
            np.asarray(crop_box, np.int64), (len(keep), 1)
        )
        return data

    def _process_batch(self, points, crop_box, image_shape, stats) -> dict:
        predictor = self.predictor
        n = len(points)
        low_res, iou_preds = predictor.predict_low_res(
            points[:, None, :], np.ones((n, 1), np.int32)
        )
        k = low_res.shape[1]
        low_res = low_res.reshape((n * k,) + low_res.shape[2:])
        iou_preds = iou_preds.reshape(-1)
        points = np.repeat(points, k, axis=0)  # one row per mask
        # Filter by predicted IoU before upsampling (the official filters
        # after; same result, but rejected masks are never upsampled).
        if self.pred_iou_thresh > 0.0:
            keep = np.flatnonzero(iou_preds > np.float32(self.pred_iou_thresh))
        else:
            keep = np.arange(n * k)
        stats["points"] += n
        stats["masks"] += n * k
        stats["removed"]["pred_iou_thresh"] += n * k - len(keep)
        removed = stats["removed"]
        img_h, img_w = image_shape[:2]
        x0, y0 = crop_box[:2]
        h, w = predictor.original_size
        chunk = max(1, _MAX_UPSAMPLED_PIXELS // (h * w))
        parts = []
        for start in range(0, len(keep), chunk):
            idx = keep[start : start + chunk]
            logits = predictor.upscale(
                low_res[idx]
            )  # (c, h, w) at the crop's resolution
            stability = amg_utils.stability_score(
                logits, MASK_THRESHOLD, self.stability_score_offset
            )
            if self.stability_score_thresh > 0.0:
                ok = stability >= np.float32(self.stability_score_thresh)
                removed["stability_score_thresh"] += len(ok) - int(ok.sum())
                idx, logits, stability = idx[ok], logits[ok], stability[ok]
            masks = logits > MASK_THRESHOLD
            del logits
            boxes = amg_utils.masks_to_boxes(masks) + np.array([x0, y0] * 2)
            ok = ~amg_utils.boxes_near_crop_edge(
                boxes, crop_box, [0, 0, img_w, img_h]
            )
            removed["crop_edge"] += len(ok) - int(ok.sum())
            rles = amg_utils.masks_to_rle(
                masks[ok], crop_box=crop_box, image_size=(img_h, img_w)
            )
            parts.append(
                {
                    "rles": [r["counts"] for r in rles],
                    "boxes": boxes[ok],
                    "iou_preds": iou_preds[idx[ok]],
                    "points": points[idx[ok]] + np.array([x0, y0]),
                    "stability_score": stability[ok],
                }
            )
        return _concat(parts, _BATCH_KEYS)

    def _remove_small_regions(
        self, data: dict, size: tuple[int, int], nms_thresh: float
    ) -> dict:
        """Fill small holes, drop small islands, then NMS preferring the
        masks that did not change (official `postprocess_small_regions`)."""
        if not data["rles"]:
            return data
        rles, boxes = list(data["rles"]), data["boxes"].copy()
        unchanged = np.ones(len(rles), np.float32)
        for i, counts in enumerate(data["rles"]):
            mask = amg_utils.rle_to_mask({"size": size, "counts": counts})
            area = self.min_mask_region_area
            mask, filled = amg_utils.remove_small_regions(mask, area, "holes")
            mask, cut = amg_utils.remove_small_regions(mask, area, "islands")
            if filled or cut:
                unchanged[i] = 0.0
                rles[i] = amg_utils.masks_to_rle(mask[None])[0]["counts"]
                boxes[i] = amg_utils.masks_to_boxes(mask)
        keep = amg_utils.nms(boxes, unchanged, nms_thresh)
        data = dict(data, rles=rles, boxes=boxes)
        return _take(data, keep)

    def _records(self, data: dict, size: tuple[int, int]) -> list[dict]:
        size = [int(v) for v in size]
        bboxes = amg_utils.box_xyxy_to_xywh(data["boxes"]).tolist()
        crop_boxes = amg_utils.box_xyxy_to_xywh(data["crop_boxes"]).tolist()
        records = []
        for i, counts in enumerate(data["rles"]):
            rle = {"size": list(size), "counts": counts}
            if self.output_mode == "binary_mask":
                segmentation = amg_utils.rle_to_mask(rle)
            elif self.output_mode == "coco_rle":
                segmentation = amg_utils.coco_encode_rle(rle)
            else:
                segmentation = {"size": list(size), "counts": counts.tolist()}
            records.append(
                {
                    "segmentation": segmentation,
                    "area": amg_utils.rle_area(rle),
                    "bbox": bboxes[i],
                    "predicted_iou": float(data["iou_preds"][i]),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": float(data["stability_score"][i]),
                    "crop_box": crop_boxes[i],
                }
            )
        return records


_EMPTY = {
    "rles": [],
    "boxes": np.zeros((0, 4), np.int64),
    "iou_preds": np.zeros((0,), np.float32),
    "points": np.zeros((0, 2), np.float64),
    "stability_score": np.zeros((0,), np.float32),
    "crop_boxes": np.zeros((0, 4), np.int64),
}


_KEYS = tuple(_EMPTY)
_BATCH_KEYS = tuple(k for k in _EMPTY if k != "crop_boxes")


def _concat(parts: list[dict], keys: tuple[str, ...]) -> dict:
    """Concatenate mask records stored as columns (arrays and lists)."""
    out = {}
    for key in keys:
        values = [p[key] for p in parts]
        if key == "rles":
            out[key] = [r for v in values for r in v]
        elif values:
            out[key] = np.concatenate(values, axis=0)
        else:
            out[key] = _EMPTY[key]
    return out


def _take(data: dict, idx: np.ndarray) -> dict:
    """Records `idx` (in that order) of column-stored mask records."""
    return {
        key: [value[i] for i in idx] if isinstance(value, list) else value[idx]
        for key, value in data.items()
    }


class _Progress:
    """Progress over the point batches of one picture: a line on stderr
    (`report=True`) or calls `report(done, total)`."""

    def __init__(self, batches_per_crop: list[int], report):
        self.ends = list(itertools.accumulate(batches_per_crop))
        self.total, self.done, self.report = self.ends[-1], 0, report
        self._show()

    def _crop(self) -> int:
        """1-based index of the crop of the last batch done (or the first)."""
        return bisect.bisect_right(self.ends, max(self.done - 1, 0)) + 1

    def _show(self):
        if callable(self.report):
            self.report(self.done, self.total)
        elif self.report:
            sys.stderr.write(
                f"\rSAMAutomaticMaskGenerator: point batch "
                f"{self.done}/{self.total} (crop {self._crop()}/"
                f"{len(self.ends)})"
            )
            sys.stderr.flush()

    def step(self):
        self.done += 1
        self._show()

    def close(self):
        if self.report is True:
            sys.stderr.write("\n")
            sys.stderr.flush()
