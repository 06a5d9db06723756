"""The server's model side: encode, predict and segment everything, one
request at a time."""

import threading

import numpy as np

from keras_sam.inference.amg_utils import coco_document
from keras_sam.inference.amg_utils import masks_to_rle
from keras_sam.inference.automatic_mask_generator import (
    SAMAutomaticMaskGenerator,
)
from keras_sam.inference.predictor import SAMPredictor
from keras_sam.inference.user_prompts import check_prompts
from keras_sam.serve.sessions import ImageEntry


class Segmenter:
    """A SAM model shared by every request of the server.

    The model runs one call at a time (a lock): its backends already use
    every core for one call, and the predictor holds one image at a time.
    The predictor is switched to a request's picture by its stored
    embedding, which costs no encoding.

    Args:
        model: a `keras_sam.SAM`.
    """

    def __init__(self, model):
        self.model = model
        self.predictor = SAMPredictor(model)
        self._lock = threading.Lock()
        self._current = None  # the entry whose embedding the predictor holds

    def encode(self, image: np.ndarray) -> ImageEntry:
        """An entry for uint8 `(H, W, 3)` RGB `image`, with its embedding.

        Raises:
            ValueError: a picture the model cannot take (too elongated).
        """
        with self._lock:
            self._current = None
            self.predictor.set_image(image)
            entry = ImageEntry(
                image=image, embedding=self.predictor.get_image_embedding()
            )
            self._current = entry
            return entry

    def warm_up(self) -> None:
        """Trace the encoder and the decoder for the first prompts a page
        sends (one click, one box) on a blank picture, so that the first
        real ones answer at once."""
        entry = self.encode(np.zeros((64, 64, 3), np.uint8))
        self.predict(
            entry, points=[[32, 32]], labels=[1], box=None, multimask=True
        )
        self.predict(
            entry, points=[], labels=[], box=[8, 8, 40, 40], multimask=False
        )

    def _select(self, entry: ImageEntry) -> None:
        if self._current is not entry:
            self._current = None
            self.predictor.set_image_embedding(entry.embedding, entry.size)
            self._current = entry

    def predict(
        self,
        entry: ImageEntry,
        *,
        points: list,
        labels: list,
        box: list | None,
        multimask: bool,
        previous_mask: bool = False,
        previous_index: int | None = None,
        remember: bool = True,
    ) -> list[dict]:
        """Masks for one prompt on `entry`'s picture.

        Args:
            entry: the picture.
            points: `[[x, y], ...]` pixels of the picture.
            labels: one per point, 1 foreground or 0 background; none
                given: every point is foreground.
            box: `[x1, y1, x2, y2]` pixels, or None.
            multimask: three candidates (True) or one mask.
            previous_mask: feed the low-res logits of the last remembered
                prediction on this picture back as the mask prompt.
            previous_index: which of those candidates; default the
                best-scored.
            remember: keep this prediction's logits for `previous_mask`
                (a hover preview does not).

        Returns:
            One `{"rle": uncompressed COCO RLE of the full-size mask,
            "score": predicted IoU}` per mask.

        Raises:
            ValueError: a bad prompt (outside the picture, wrong shapes,
                nothing given) or no earlier prediction to refine.
        """
        if not points and box is None:
            raise ValueError("give at least one point or a box")
        if points and not labels:
            labels = [1] * len(points)
        for label in labels:
            if label not in (0, 1):
                raise ValueError(
                    "labels must be 1 (foreground) or 0 (background). "
                    f"Received: labels={labels}"
                )
        point_coords = np.asarray(points, np.float32) if points else None
        point_labels = np.asarray(labels, np.int32) if points else None
        box_array = None if box is None else np.asarray(box, np.float32)
        check_prompts(
            point_coords, point_labels, box_array, image_size=entry.size
        )
        mask_input = None
        if previous_mask:
            logits, scores = entry.last_logits, entry.last_scores
            if logits is None:
                raise ValueError(
                    "previous_mask: there is no earlier prediction on this "
                    "image to refine"
                )
            if previous_index is None:
                index = int(np.argmax(scores))
            elif 0 <= previous_index < len(logits):
                index = previous_index
            else:
                raise ValueError(
                    f"previous_index must be in [0, {len(logits) - 1}]. "
                    f"Received: previous_index={previous_index}"
                )
            mask_input = logits[index][None]
        with self._lock:
            self._select(entry)
            masks, scores, logits = self.predictor.predict(
                point_coords=point_coords,
                point_labels=point_labels,
                box=box_array,
                mask_input=mask_input,
                multimask_output=multimask,
            )
        if remember:
            entry.last_logits, entry.last_scores = logits, scores
        rles = masks_to_rle(masks)
        return [
            {"rle": _jsonable_rle(rle), "score": float(score)}
            for rle, score in zip(rles, scores, strict=True)
        ]

    def everything(
        self,
        entry: ImageEntry,
        *,
        points_per_side: int = 32,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        file_name: str = "image",
    ) -> dict:
        """COCO-style annotations of every mask the automatic mask
        generator finds on `entry`'s picture (its stored embedding serves
        the whole-picture crop); `entry.progress` follows the point
        batches while it runs."""

        def progress(done: int, total: int) -> None:
            entry.progress = (done, total)

        entry.progress = (0, 0)
        try:
            with self._lock:
                generator = SAMAutomaticMaskGenerator(
                    self.model,
                    points_per_side=points_per_side,
                    pred_iou_thresh=pred_iou_thresh,
                    stability_score_thresh=stability_score_thresh,
                    output_mode="uncompressed_rle",
                    progress=progress,
                )
                records = generator.generate(
                    entry.image, image_embedding=entry.embedding
                )
        finally:
            entry.progress = None
        for record in records:
            record["segmentation"] = _jsonable_rle(record["segmentation"])
        h, w = entry.size
        return coco_document(records, file_name=file_name, height=h, width=w)


def _jsonable_rle(rle: dict) -> dict:
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": np.asarray(rle["counts"]).tolist(),
    }
