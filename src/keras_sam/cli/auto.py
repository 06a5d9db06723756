"""`keras-sam auto`: segment everything in pictures or folders."""

import os

from keras_sam.cli.common import add_model_arguments
from keras_sam.cli.common import load_model
from keras_sam.cli.common import log


def add_parser(sub) -> None:
    auto = sub.add_parser(
        "auto",
        help="segment everything in images (automatic mask generation)",
        description=(
            "Run the automatic mask generator over images or folders of "
            "images. For each image, OUT/<name>.json holds COCO-style "
            "annotations (RLE segmentation, bbox XYWH, area, predicted_iou, "
            "stability_score, point_coords, crop_box) and OUT/<name>.png an "
            "overlay. Images already done are skipped unless --overwrite."
        ),
    )
    auto.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    auto_model = auto.add_argument_group("model")
    add_model_arguments(auto_model)
    amg = auto.add_argument_group("generator (official defaults)")
    amg.add_argument("--points-per-side", type=int, default=32)
    amg.add_argument("--points-per-batch", type=int, default=64)
    amg.add_argument("--pred-iou-thresh", type=float, default=0.88)
    amg.add_argument("--stability-score-thresh", type=float, default=0.95)
    amg.add_argument("--stability-score-offset", type=float, default=1.0)
    amg.add_argument("--box-nms-thresh", type=float, default=0.7)
    amg.add_argument("--crop-n-layers", type=int, default=0)
    amg.add_argument("--crop-nms-thresh", type=float, default=0.7)
    amg.add_argument("--crop-overlap-ratio", type=float, default=512 / 1500)
    amg.add_argument("--crop-n-points-downscale-factor", type=int, default=1)
    amg.add_argument("--min-mask-region-area", type=int, default=0)
    auto.add_argument(
        "-o", "--output", required=True, metavar="OUT_DIR", help="output folder"
    )
    auto.add_argument(
        "--overwrite", action="store_true", help="redo images already done"
    )


def run(parser, args) -> int:
    from keras_sam import io
    from keras_sam import visualize

    try:
        images = io.collect_images(args.inputs)
    except ValueError as e:
        parser.error(f"IMAGE_OR_DIR: {e}")
    os.makedirs(args.output, exist_ok=True)
    todo = []
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        json_path = os.path.join(args.output, stem + ".json")
        if os.path.exists(json_path) and not args.overwrite:
            log(f"skip {path}: {json_path} exists (use --overwrite)")
            continue
        todo.append((path, stem, json_path))
    if not todo:
        return 0
    model = load_model(parser, args)
    from keras_sam.inference.automatic_mask_generator import (
        SAMAutomaticMaskGenerator,
    )

    generator = SAMAutomaticMaskGenerator(
        model,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
        crop_nms_thresh=args.crop_nms_thresh,
        crop_overlap_ratio=args.crop_overlap_ratio,
        crop_n_points_downscale_factor=args.crop_n_points_downscale_factor,
        min_mask_region_area=args.min_mask_region_area,
        output_mode="uncompressed_rle",
    )
    from keras_sam.inference.amg_utils import rle_to_mask

    failures = 0
    for index, (path, stem, json_path) in enumerate(todo):
        log(f"[{index + 1}/{len(todo)}] {path}")
        try:
            image = io.read_image(path)
        except ValueError as e:
            log(f"error: {e}")
            failures += 1
            continue
        records = generator.generate(image)
        h, w = image.shape[:2]
        annotations = [
            {"id": i, "image_id": 0, "category_id": 1, **record}
            for i, record in enumerate(records)
        ]
        document = {
            "images": [
                {
                    "id": 0,
                    "file_name": os.path.abspath(path),
                    "height": h,
                    "width": w,
                }
            ],
            "categories": [{"id": 1, "name": "object"}],
            "annotations": annotations,
        }
        masks = [rle_to_mask(r["segmentation"]) for r in records]
        picture = visualize.overlay(
            image,
            masks,
            scores=[r["predicted_iou"] for r in records],
            legend=len(masks) <= 12,
        )
        io.write_png(picture, os.path.join(args.output, stem + ".png"))
        io.write_json(io.jsonable(document), json_path)
        print(json_path, flush=True)
        del masks, records
    return 1 if failures else 0
