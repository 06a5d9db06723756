"""The files of one picture's results, as `keras-sam auto` and bulk runs
write them: a COCO-style JSON of RLE masks and an overlay, and for `embed`
an image embedding file.

Single-machine and bulk runs write through these functions, so the same
picture and settings give the same bytes either way.
"""

import os

import numpy as np

from keras_sam import io
from keras_sam import visualize

JSON_SUFFIX = ".json"
OVERLAY_SUFFIX = ".overlay.png"


def write_masks(
    image: np.ndarray,
    records: list[dict],
    file_name: str,
    json_path: str | os.PathLike,
    overlay_path: str | os.PathLike,
) -> None:
    """Write one picture's JSON (`amg_utils.coco_document`) and overlay
    together, or neither (`keras_sam.io.output_group`); the JSON is renamed
    last, so it marks the picture done. Folders are created as needed.

    Args:
        image: the picture, uint8 `(H, W, 3)`.
        records: its `uncompressed_rle` records.
        file_name: the picture's name in the document.
        json_path, overlay_path: the two files.
    """
    from keras_sam.inference.amg_utils import coco_document
    from keras_sam.inference.amg_utils import rle_to_mask

    h, w = image.shape[:2]
    document = coco_document(records, file_name=file_name, height=h, width=w)
    masks = [rle_to_mask(r["segmentation"]) for r in records]
    picture = visualize.overlay(
        image,
        masks,
        scores=[r["predicted_iou"] for r in records],
        legend=len(masks) <= 12,
    )
    os.makedirs(os.path.dirname(os.fspath(json_path)) or ".", exist_ok=True)
    with io.output_group() as group:
        io.write_png(picture, overlay_path, group=group)
        io.write_json(io.jsonable(document), json_path, group=group)
