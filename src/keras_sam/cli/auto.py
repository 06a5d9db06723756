"""`keras-sam auto`: segment everything in pictures or folders."""

import os

from keras_sam.bulk.results import JSON_SUFFIX
from keras_sam.bulk.results import OVERLAY_SUFFIX
from keras_sam.cli import bulk
from keras_sam.cli.common import add_embeddings_argument
from keras_sam.cli.common import add_model_arguments
from keras_sam.cli.common import check_embeddings_folder
from keras_sam.cli.common import check_model_arguments
from keras_sam.cli.common import check_output_folder
from keras_sam.cli.common import failure_status
from keras_sam.cli.common import for_each_picture
from keras_sam.cli.common import load_model
from keras_sam.cli.common import log
from keras_sam.cli.common import number
from keras_sam.cli.common import pending
from keras_sam.cli.common import plan_outputs
from keras_sam.cli.common import stored_embedding

# generator argument -> flag, for the line that says why no mask was kept
THRESHOLD_FLAGS = {
    "pred_iou_thresh": "--pred-iou-thresh",
    "stability_score_thresh": "--stability-score-thresh",
    "box_nms_thresh": "--box-nms-thresh",
    "crop_nms_thresh": "--crop-nms-thresh",
    "min_mask_region_area": "--min-mask-region-area",
}


def add_parser(sub) -> None:
    auto = sub.add_parser(
        "auto",
        help="segment everything in images (automatic mask generation)",
        description=(
            "Run the automatic mask generator over images or folders of "
            "images. Each picture's results go below OUT_DIR under its path "
            "relative to the folder holding all inputs (the folder itself "
            "when one folder is given), with its extension kept: "
            "<name>.json holds COCO-style annotations (RLE segmentation, "
            "bbox XYWH, area, predicted_iou, stability_score, point_coords, "
            "crop_box) and <name>.overlay.png an overlay. So `auto photos "
            "-o out` writes out/a.jpg.json, out/a.png.json, out/sub/x.png."
            "json (with --recursive); `auto p q -o out` writes "
            "out/p/x.png.json and out/q/x.png.json. OUT_DIR may not be an "
            "input folder and no result may land among the inputs. Each "
            "picture's two files are written together or not at all; "
            "pictures whose .json exists are skipped unless --overwrite. "
            "A picture that cannot be read is reported and the others go "
            "on (exit status 1 at the end)."
        ),
    )
    auto.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="pictures, or folders of pictures (by suffix: png, jpg, "
        "jpeg, bmp, gif, tif, tiff, webp; hidden files skipped)",
    )
    auto.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="also the pictures in the folders' subfolders",
    )
    auto_model = auto.add_argument_group("model")
    add_model_arguments(auto_model)
    add_embeddings_argument(
        auto_model,
        "; with --crop-n-layers > 0 it serves the whole-picture crop, the "
        "smaller crops are encoded",
    )
    amg = auto.add_argument_group("generator (official defaults)")
    positive = number(int, 1)
    unit = number(float, 0.0, 1.0)
    amg.add_argument("--points-per-side", type=positive, default=32)
    amg.add_argument("--points-per-batch", type=positive, default=64)
    amg.add_argument("--pred-iou-thresh", type=number(), default=0.88)
    amg.add_argument("--stability-score-thresh", type=unit, default=0.95)
    amg.add_argument(
        "--stability-score-offset", type=number(float, 0.0), default=1.0
    )
    amg.add_argument("--box-nms-thresh", type=unit, default=0.7)
    amg.add_argument("--crop-n-layers", type=number(int, 0), default=0)
    amg.add_argument("--crop-nms-thresh", type=unit, default=0.7)
    amg.add_argument(
        "--crop-overlap-ratio",
        type=number(float, 0.0, 1.0, high_open=True),
        default=512 / 1500,
    )
    amg.add_argument(
        "--crop-n-points-downscale-factor", type=positive, default=1
    )
    amg.add_argument("--min-mask-region-area", type=number(int, 0), default=0)
    auto.add_argument(
        "-o", "--output", required=True, metavar="OUT_DIR", help="output folder"
    )
    auto.add_argument(
        "--overwrite", action="store_true", help="redo images already done"
    )
    bulk.add_arguments(auto)


def plan(parser, args) -> list[tuple[str, str, str]]:
    """`(picture, json path, overlay path)` of every picture the inputs
    name; usage errors for outputs that could touch an input."""
    return [
        (path, *targets)
        for path, targets in plan_outputs(
            parser, args, (JSON_SUFFIX, OVERLAY_SUFFIX)
        )
    ]


def why_no_masks(generator, args) -> str:
    """One sentence on where the candidate masks of the last picture went
    (`SAMAutomaticMaskGenerator.last_stats`)."""
    fallback = (
        "no mask passed the thresholds (--pred-iou-thresh "
        f"{args.pred_iou_thresh:g}, --stability-score-thresh "
        f"{args.stability_score_thresh:g}); try lower ones"
    )
    stats = getattr(generator, "last_stats", None)
    try:
        removed = {k: int(v) for k, v in stats["removed"].items() if v}
        candidates = int(stats["masks"])
        points = int(stats["points"])
    except (TypeError, KeyError, ValueError):
        return fallback
    if not candidates:
        return "no mask: no point prompt was decoded"
    parts = []
    for step, count in removed.items():
        flag = THRESHOLD_FLAGS.get(step)
        if flag is not None:
            value = getattr(args, flag[2:].replace("-", "_"))
            parts.append(f"{flag} {value:g} removed {count}")
        else:
            parts.append(f"{step.replace('_', ' ')} removed {count}")
    hint = ""
    if {"pred_iou_thresh", "stability_score_thresh"} & set(removed):
        hint = "; try lower thresholds"
    return (
        f"no mask kept: of {candidates} candidate masks ({points} points, "
        f"3 each), {', '.join(parts)}{hint}"
    )


def generator_arguments(args) -> dict:
    """`SAMAutomaticMaskGenerator` arguments from the generator flags."""
    return {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "stability_score_offset": args.stability_score_offset,
        "box_nms_thresh": args.box_nms_thresh,
        "crop_n_layers": args.crop_n_layers,
        "crop_nms_thresh": args.crop_nms_thresh,
        "crop_overlap_ratio": args.crop_overlap_ratio,
        "crop_n_points_downscale_factor": args.crop_n_points_downscale_factor,
        "min_mask_region_area": args.min_mask_region_area,
    }


def run(parser, args) -> int:
    from keras_sam import io

    if bulk.wanted(args):
        return bulk.run(parser, args, "auto", generator_arguments(args))
    check_model_arguments(parser, args)
    check_embeddings_folder(parser, args)
    check_output_folder(parser, "-o/--output", args.output)
    jobs = plan(parser, args)
    todo = pending(args, jobs)
    if not todo:
        return 0
    model = load_model(parser, args)
    from keras_sam.bulk.results import write_masks  # noqa: I001
    from keras_sam.inference.automatic_mask_generator import (
        SAMAutomaticMaskGenerator,
    )

    generator = SAMAutomaticMaskGenerator(
        model,
        **generator_arguments(args),
        output_mode="uncompressed_rle",
        progress=True,  # point batches on stderr: a large picture takes a while
    )
    fingerprint = None
    if args.embeddings is not None:
        from keras_sam.inference.embeddings import model_fingerprint

        fingerprint = model_fingerprint(model)
    reused = 0

    def compute(path, json_path, png_path):
        nonlocal reused
        image = io.read_image(path)
        embedding = None
        if fingerprint is not None:
            # ValueError: a stored one for another picture or model
            stored = stored_embedding(args, path, image, fingerprint)
            if stored is not None:
                embedding, reused = stored.embedding, reused + 1
        # ValueError: a picture the model cannot take (too elongated)
        return image, generator.generate(image, image_embedding=embedding)

    def write(job, result):
        path, json_path, png_path = job
        image, records = result
        if not records:
            log(f"{path}: {why_no_masks(generator, args)}")
        write_masks(image, records, os.path.abspath(path), json_path, png_path)
        print(json_path, flush=True)

    failed = for_each_picture(todo, compute, write)
    if fingerprint is not None:
        log(
            f"used {reused} stored embedding(s) from {args.embeddings}, "
            f"encoded {len(todo) - len(failed) - reused} picture(s)"
        )
    return failure_status(failed, len(todo))
