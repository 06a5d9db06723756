"""The `keras-sam` command line.

Subcommands:
    segment  masks for clicks and boxes on an image (PNGs, overlay, JSON)
    convert  an official checkpoint to safetensors or Keras .weights.h5
    info     the architecture and size of a checkpoint
    demo     the prompt encoder and mask decoder end to end on an example

`--backend` is applied before Keras is imported. Results go to stdout,
progress and logs to stderr.
"""

import argparse
import os
import sys
import time

BACKENDS = ("jax", "torch", "tensorflow")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-sam",
        description="Segment Anything (SAM) for Keras 3.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (default: $KERAS_BACKEND, else jax).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="run the two SAM layers end to end on a small example",
        description=(
            "Encode a click and a box with SAMPromptEncoder and decode masks "
            "with SAMMaskDecoder (ViT-B sizes) from a synthetic image "
            "embedding. The weights are random (seeded) until a trained "
            "model ships, so the masks show shapes and speed, not meaning."
        ),
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed")

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
    import numpy as np
    from PIL import Image
    from PIL import UnidentifiedImageError

    if not os.path.isfile(path):
        parser.error(f"IMAGE: no such file: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        parser.error(f"IMAGE: cannot read {path} as an image ({e})")


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

    from keras_sam.layers import SAMMaskDecoder
    from keras_sam.layers import SAMPromptEncoder

    keras.utils.set_random_seed(args.seed)
    log = sys.stderr
    print(f"backend: {keras.backend.backend()}", file=log)
    encoder = SAMPromptEncoder()  # ViT-B/L/H prompt encoder sizes
    decoder = SAMMaskDecoder(
        hidden_size=256, num_layers=2, intermediate_dim=2048, num_heads=8
    )
    encoder.build()
    decoder.build()
    rng = np.random.default_rng(args.seed)
    embedding = rng.normal(size=(1, 64, 64, 256)).astype("float32")
    prompts = {
        "one click (+ padding point)": dict(
            points=np.array([[[500.0, 375.0], [0.0, 0.0]]], "float32"),
            labels=np.array([[1, -1]], "int32"),
        ),
        "one box": dict(
            boxes=np.array([[[[425.0, 600.0], [700.0, 875.0]]]], "float32")
        ),
    }

    def trainable(layer):
        return sum(int(np.prod(v.shape)) for v in layer.trainable_weights)

    print(
        f"prompt encoder: {trainable(encoder):,} trainable parameters; "
        f"mask decoder: {trainable(decoder):,} (random seeded weights)"
    )
    for name, prompt in prompts.items():
        start = time.perf_counter()
        encoded = encoder(**prompt)
        out = decoder(image_embeddings=embedding, **encoded)
        masks = keras.ops.convert_to_numpy(out["masks"])
        iou = keras.ops.convert_to_numpy(out["iou_pred"])
        ms = 1000 * (time.perf_counter() - start)
        sparse = tuple(encoded["prompt_sparse_embeddings"].shape)
        print(
            f"{name}: sparse tokens {sparse} -> masks {masks.shape}, "
            "predicted IoU [" + ", ".join(f"{v:.3f}" for v in iou[0]) + "], "
            f"foreground pixels of mask 0: {int((masks[0, 0] > 0).sum())}, "
            f"{ms:.0f} ms (first call includes tracing)"
        )
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
        os.environ["KERAS_BACKEND"] = "jax"
    commands = {
        "segment": _segment,
        "convert": _convert,
        "info": _info,
    }
    if args.command == "demo":
        return _demo(args)
    try:
        return commands[args.command](parser, args)
    except ValueError as e:  # bad checkpoint, bad prompt: a clear message
        _log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
