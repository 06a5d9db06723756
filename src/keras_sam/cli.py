"""The `keras-sam` command line.

Subcommands:
    segment  masks for clicks and boxes on an image (PNGs, overlay, JSON)
    auto     segment everything in images or folders (COCO RLE JSON, overlay)
    convert  an official checkpoint to safetensors or Keras .weights.h5
    info     the architecture and size of a checkpoint
    demo     segment a held-out shapes picture with the bundled model

`--backend` is applied before Keras is imported. Results go to stdout,
progress and logs to stderr.
"""

import argparse
import os
import sys
import time

BACKENDS = ("jax", "torch", "tensorflow")
# Without --backend or $KERAS_BACKEND: the first installed of these, fastest
# first on a CPU as measured by benchmarks/ (BENCHMARKS.md, README "Speed"):
# TensorFlow's graphs run the ViT-B image encoder in half JAX's time and
# decode 64 prompts at 57/s (JAX 44/s, PyTorch eager 17/s).
BACKEND_PREFERENCE = ("tensorflow", "jax", "torch")


def default_backend() -> str:
    """The fastest installed Keras backend (see `BACKEND_PREFERENCE`)."""
    import importlib.util

    for name in BACKEND_PREFERENCE:
        if importlib.util.find_spec(name) is not None:
            return name
    return "tensorflow"  # Keras' own default; it will say what is missing


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-sam",
        description="Segment Anything (SAM) for Keras 3.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (default: $KERAS_BACKEND, else the fastest "
        "installed on a CPU: tensorflow, then jax, then torch).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="segment a held-out shapes picture with the bundled model",
        description=(
            "Make a synthetic shapes picture the bundled sam_shapes model "
            "never saw in training, segment one object from one click and "
            "another from a box, write an overlay PNG, and print the IoU of "
            "each mask against the true mask."
        ),
    )
    demo.add_argument(
        "--seed", type=int, default=7, help="which held-out picture"
    )
    demo.add_argument(
        "-o", "--output", default="demo_out", help="output folder"
    )

    segment = sub.add_parser(
        "segment",
        help="segment the object at clicks and/or a box",
        description=(
            "Write mask_<i>.png, overlay.png and result.json (scores, "
            "prompts, sizes) to OUT. Coordinates are pixels of IMAGE."
        ),
    )
    segment.add_argument("image", help="image file (PNG, JPEG, ...)")
    prompts = segment.add_argument_group("prompts")
    prompts.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="a click; LABEL 1 foreground (default) or 0 background; "
        "repeatable",
    )
    prompts.add_argument(
        "--box", metavar="X1,Y1,X2,Y2", help="a box around the object"
    )
    model = segment.add_argument_group("model")
    _add_model_arguments(model)
    segment.add_argument(
        "--multimask",
        action="store_true",
        help="three masks for an ambiguous prompt instead of one",
    )
    segment.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output folder"
    )

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
    _add_model_arguments(auto_model)
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

    convert = sub.add_parser(
        "convert",
        help="convert an official checkpoint",
        description=(
            "Read an official SAM checkpoint (.pth, loaded without running "
            "any code from it) and write it as .safetensors (same tensor "
            "names) or as Keras weights (.weights.h5)."
        ),
    )
    convert.add_argument("checkpoint", help="official .pth or .safetensors")
    convert.add_argument(
        "-o", "--output", required=True, help="*.safetensors or *.weights.h5"
    )

    info = sub.add_parser("info", help="architecture and size of a checkpoint")
    info.add_argument("checkpoint", help="official .pth or .safetensors")
    return parser


def _add_model_arguments(group) -> None:
    from keras_sam.models.presets import PRESETS

    group.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="official .pth or .safetensors (architecture read from it)",
    )
    group.add_argument(
        "--preset",
        metavar="NAME",
        help=f"one of {', '.join(sorted(PRESETS))}; downloads the official "
        "weights unless --checkpoint is given",
    )


def _parse_numbers(parser, flag: str, text: str, counts: tuple[int, ...]):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(
        v == v and abs(v) != float("inf") for v in values
    ):
        shapes = " or ".join(str(c) for c in counts)
        parser.error(
            f"{flag} takes {shapes} comma-separated numbers. Received: "
            f"{flag} {text}"
        )
    return values


def _load_model(parser, args):
    from keras_sam.models.presets import PRESETS
    from keras_sam.models.sam import SAM

    if args.preset is None and args.checkpoint is None:
        parser.error("give --checkpoint PATH or --preset NAME")
    if args.preset is not None and args.preset not in PRESETS:
        parser.error(
            f"--preset: unknown preset {args.preset!r}; available: "
            f"{', '.join(sorted(PRESETS))}"
        )
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint: no such file: {args.checkpoint}")
    _log(f"loading model ({args.checkpoint or args.preset})")
    if args.preset is not None:
        return SAM.from_preset(args.preset, weights=args.checkpoint or True)
    return SAM.from_checkpoint(args.checkpoint)


def _log(message: str) -> None:
    print(f"keras-sam: {message}", file=sys.stderr, flush=True)


def _read_image(parser, path: str):

    if not os.path.isfile(path):
        parser.error(f"IMAGE: no such file: {path}")
    try:
        return _read_image_or_raise(path)
    except ValueError as e:
        parser.error(f"IMAGE: {e}")


def _segment(parser, args) -> int:
    import json

    import numpy as np

    from keras_sam import visualize

    points, labels = [], []
    for text in args.point:
        values = _parse_numbers(parser, "--point", text, (2, 3))
        label = values[2] if len(values) == 3 else 1.0
        if label not in (0.0, 1.0):
            parser.error(
                f"--point LABEL must be 1 (foreground) or 0 (background). "
                f"Received: --point {text}"
            )
        points.append(values[:2])
        labels.append(int(label))
    box = None
    if args.box is not None:
        box = _parse_numbers(parser, "--box", args.box, (4,))
    if not points and box is None:
        parser.error("give at least one --point or a --box")
    image = _read_image(parser, args.image)
    h, w = image.shape[:2]
    for (x, y), text in zip(points, args.point, strict=True):
        if not (0 <= x <= w and 0 <= y <= h):
            parser.error(
                f"--point {text} lies outside the {w}x{h} image "
                f"(0 <= x <= {w}, 0 <= y <= {h})"
            )
    if box is not None:
        x1, y1, x2, y2 = box
        if not (0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h):
            parser.error(
                f"--box {args.box} must satisfy 0 <= x1 <= x2 <= {w} and "
                f"0 <= y1 <= y2 <= {h}"
            )
    model = _load_model(parser, args)
    from keras_sam.predictor import SAMPredictor

    predictor = SAMPredictor(model)
    _log(f"encoding {args.image} ({w}x{h})")
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=np.array(points) if points else None,
        point_labels=np.array(labels) if points else None,
        box=np.array(box) if box is not None else None,
        multimask_output=args.multimask,
    )
    os.makedirs(args.output, exist_ok=True)
    files = []
    for i, mask in enumerate(masks):
        path = os.path.join(args.output, f"mask_{i}.png")
        visualize.save_png(mask.astype(np.uint8) * 255, path)
        files.append(path)
    picture = visualize.overlay(
        image,
        masks,
        scores=scores,
        points=points or None,
        point_labels=labels or None,
        boxes=[box] if box is not None else None,
    )
    overlay_path = os.path.join(args.output, "overlay.png")
    visualize.save_png(picture, overlay_path)
    result = {
        "image": os.path.abspath(args.image),
        "image_size": [h, w],
        "points": points,
        "point_labels": labels,
        "box": box,
        "multimask_output": bool(args.multimask),
        "masks": [
            {
                "file": os.path.abspath(f),
                "score": float(s),
                "area": int(m.sum()),
            }
            for f, s, m in zip(files, scores, masks, strict=True)
        ],
        "overlay": os.path.abspath(overlay_path),
    }
    _write_json(os.path.join(args.output, "result.json"), result)
    print(json.dumps(result, indent=2))
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _collect_images(parser, inputs: list[str]) -> list[str]:
    images = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_SUFFIXES)
            )
            images += found
        elif os.path.isfile(item):
            images.append(item)
        else:
            parser.error(f"IMAGE_OR_DIR: no such file or folder: {item}")
    if not images:
        parser.error("IMAGE_OR_DIR: no images found")
    return images


def _auto(parser, args) -> int:
    from keras_sam import visualize

    images = _collect_images(parser, args.inputs)
    os.makedirs(args.output, exist_ok=True)
    todo = []
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        json_path = os.path.join(args.output, stem + ".json")
        if os.path.exists(json_path) and not args.overwrite:
            _log(f"skip {path}: {json_path} exists (use --overwrite)")
            continue
        todo.append((path, stem, json_path))
    if not todo:
        return 0
    model = _load_model(parser, args)
    from keras_sam.automatic_mask_generator import SAMAutomaticMaskGenerator

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
    from keras_sam.amg_utils import rle_to_mask

    failures = 0
    for index, (path, stem, json_path) in enumerate(todo):
        _log(f"[{index + 1}/{len(todo)}] {path}")
        try:
            image = _read_image_or_raise(path)
        except ValueError as e:
            _log(f"error: {e}")
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
        visualize.save_png(picture, os.path.join(args.output, stem + ".png"))
        _write_json(json_path, _jsonable(document))
        print(json_path, flush=True)
        del masks, records
    return 1 if failures else 0


def _jsonable(value):
    import numpy as np

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_image_or_raise(path: str):
    import numpy as np
    from PIL import Image
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {path} as an image ({e})") from e


def _write_json(path: str, data) -> None:
    import json
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".json.part", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _convert(parser, args) -> int:
    from keras_sam.convert.checkpoint import read_state_dict
    from keras_sam.convert.checkpoint import write_safetensors

    if not os.path.isfile(args.checkpoint):
        parser.error(f"CHECKPOINT: no such file: {args.checkpoint}")
    out = args.output
    if not (out.endswith(".safetensors") or out.endswith(".weights.h5")):
        parser.error(
            "-o/--output must end in .safetensors or .weights.h5. "
            f"Received: {out}"
        )
    state = read_state_dict(args.checkpoint)
    if out.endswith(".safetensors"):
        write_safetensors(state, out)
    else:
        from keras_sam.convert.checkpoint import detect_architecture
        from keras_sam.models.sam import SAM

        model = SAM.from_config_dicts(**detect_architecture(state))
        model.build()
        model.load_state_dict(state)
        tmp = out[: -len(".weights.h5")] + ".part.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, out)
    print(out)
    return 0


def _info(parser, args) -> int:
    import json

    import numpy as np

    from keras_sam.convert.checkpoint import detect_architecture
    from keras_sam.convert.checkpoint import read_state_dict
    from keras_sam.models.presets import PRESETS

    if not os.path.isfile(args.checkpoint):
        parser.error(f"CHECKPOINT: no such file: {args.checkpoint}")
    state = read_state_dict(args.checkpoint)
    config = detect_architecture(state)
    preset = next(
        (
            name
            for name, p in sorted(PRESETS.items())
            if _same_config(p, config)
        ),
        None,
    )
    info = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "tensors": len(state),
        "parameters": int(sum(np.prod(v.shape) for v in state.values())),
        "preset": preset,
        "architecture": config,
    }
    print(json.dumps(info, indent=2, default=list))
    return 0


def _same_config(preset: dict, config: dict) -> bool:
    def norm(d):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

    return all(
        norm({k: v for k, v in config[part].items() if k in preset[part]})
        == norm(preset[part])
        for part in ("image_encoder", "prompt_encoder", "mask_decoder")
    )


def _demo(args) -> int:
    import keras
    import numpy as np

    from keras_sam import visualize
    from keras_sam.datasets.shapes import make_scene
    from keras_sam.evaluation import EVALUATION_SEED
    from keras_sam.evaluation import interior_point
    from keras_sam.evaluation import mask_iou
    from keras_sam.evaluation import tight_box
    from keras_sam.models.sam import SAM
    from keras_sam.predictor import SAMPredictor

    _log(f"backend: {keras.backend.backend()}")
    start = time.perf_counter()
    model = SAM.from_preset("sam_shapes", weights=True)
    predictor = SAMPredictor(model)
    image, masks = make_scene((EVALUATION_SEED, int(args.seed), 0, 1))
    if len(masks) < 2:
        raise ValueError(f"scene {args.seed} has fewer than two objects")
    order = np.argsort([-m.sum() for m in masks])
    clicked, boxed = masks[order[0]], masks[order[1]]
    point = interior_point(clicked)
    box = tight_box(boxed)
    predictor.set_image(image)
    click_masks, click_scores, _ = predictor.predict(
        point_coords=point[None], point_labels=np.array([1])
    )
    best = int(np.argmax(click_scores))
    box_masks, box_scores, _ = predictor.predict(
        box=box, multimask_output=False
    )
    seconds = time.perf_counter() - start
    click_iou = mask_iou(click_masks[best], clicked)
    box_iou = mask_iou(box_masks[0], boxed)
    os.makedirs(args.output, exist_ok=True)
    picture = visualize.overlay(
        image,
        [click_masks[best], box_masks[0]],
        scores=[click_iou, box_iou],
        labels=["click, IoU", "box, IoU"],
        points=point[None],
        point_labels=[1],
        boxes=box[None],
    )
    overlay = os.path.join(args.output, "demo_overlay.png")
    visualize.save_png(picture, overlay)
    visualize.save_png(image, os.path.join(args.output, "demo_input.png"))
    print(
        f"held-out shapes picture {args.seed} ({image.shape[1]}x"
        f"{image.shape[0]}, {len(masks)} objects), bundled model sam_shapes"
    )
    print(
        f"one click at ({point[0]:.0f}, {point[1]:.0f}): IoU with the true "
        f"mask {click_iou:.3f} (predicted {click_scores[best]:.3f})"
    )
    print(
        f"box {box.astype(int).tolist()}: IoU with the true mask "
        f"{box_iou:.3f} (predicted {box_scores[0]:.3f})"
    )
    print(f"overlay: {overlay} ({seconds:.1f} s in all)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.backend:
        if "keras" in sys.modules:
            parser.error(
                "--backend must be set before Keras is imported; "
                "use $KERAS_BACKEND instead"
            )
        os.environ["KERAS_BACKEND"] = args.backend
    if not os.environ.get("KERAS_BACKEND"):
        os.environ["KERAS_BACKEND"] = default_backend()
    # torch's OpenMP threads otherwise spin while NumPy works (2-core CPU:
    # the automatic mask generator ran 3x slower under the torch backend).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # TensorFlow's C++ info/warning lines (XLA cluster compilation, Grappler
    # cost estimates) are not for a command's user; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    commands = {
        "auto": _auto,
        "segment": _segment,
        "convert": _convert,
        "info": _info,
    }
    commands["demo"] = lambda parser, args: _demo(args)
    try:
        return commands[args.command](parser, args)
    except ValueError as e:  # bad checkpoint, bad prompt: a clear message
        _log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
