"""bfloat16 against float32: how far the opt-in `precision="bfloat16"`
moves the masks.

1. The bundled `sam_shapes` model on held-out shapes pictures
   (`keras_sam.training.evaluation.evaluate_shapes`): point and box mIoU in
   each precision, and the difference (target: within 0.005).
2. ViT-B with the official layout's random weights (`official.make_sam`,
   seed 0, converted): the masks of a few clicks and boxes on one smooth
   picture, float32 vs bfloat16, IoU over the confident pixels: those whose
   float32 logit is farther from 0 than `--margin` times the largest
   |float32 logit| of the same mask (target: >= 0.98). A relative margin,
   since random weights give logits of about 0.1, not SAM's tens.
   Random weights are a weak proxy for trained ones: their logits crowd
   near 0 and their attention is nearly uniform.

Run from the repository root (one backend per run):
    KERAS_BACKEND=tensorflow python benchmarks/bf16_agreement.py
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shapes_agreement(num_images: int) -> dict:
    """Held-out mIoU of the bundled model in both precisions."""
    from keras_sam.models.sam import SAM
    from keras_sam.training.evaluation import evaluate_shapes

    out = {}
    for precision in ("float32", "bfloat16"):
        model = SAM.from_preset("sam_shapes", weights=True, precision=precision)
        out[precision] = evaluate_shapes(model, num_images=num_images)
    for key in ("point_miou", "box_miou"):
        out[f"{key}_difference"] = out["bfloat16"][key] - out["float32"][key]
    return out


def vit_b_agreement(margin: float) -> dict:
    """Confident-pixel IoU of ViT-B random-weight masks, bf16 vs float32."""
    import keras
    import numpy as np

    from keras_sam.convert.weights import load_official_weights
    from keras_sam.inference.predictor import SAMPredictor
    from keras_sam.models.presets import PRESETS
    from keras_sam.models.sam import SAM
    from support.fixtures import smooth_image
    from support.reference import official

    preset = PRESETS["sam_vit_b"]
    decoder = preset["mask_decoder"]
    ref = official.make_preset_sam(preset, seed=0)
    state = ref.state_dict()
    del ref
    image = smooth_image((600, 900, 3), seed=0)
    clicks = [(450.0, 300.0), (150.0, 100.0), (700.0, 450.0)]
    boxes = [(100.0, 80.0, 500.0, 400.0), (400.0, 200.0, 850.0, 580.0)]
    logits = {}
    seconds = {}
    for precision in ("float32", "bfloat16"):
        model = SAM.from_config_dicts(
            preset["image_encoder"],
            preset["prompt_encoder"],
            decoder,
            precision=precision,
        )
        model.build()
        load_official_weights(model, state)
        predictor = SAMPredictor(model)
        start = time.perf_counter()
        predictor.set_image(image)
        seconds[precision] = time.perf_counter() - start
        results = []
        for x, y in clicks:
            results.append(
                predictor.predict(
                    point_coords=np.array([[x, y]]),
                    point_labels=np.array([1]),
                    multimask_output=True,
                    return_logits=True,
                )[0]
            )
        for box in boxes:
            results.append(
                predictor.predict(
                    box=np.array(box),
                    multimask_output=False,
                    return_logits=True,
                )[0]
            )
        logits[precision] = np.concatenate(results)
        del model, predictor
        keras.backend.clear_session()
    ref_logits, got = logits["float32"], logits["bfloat16"]
    # (masks, H, W): each mask's own scale.
    scale = np.abs(ref_logits).max(axis=(1, 2), keepdims=True)

    def iou(keep):
        a, b = ref_logits[keep] > 0, got[keep] > 0
        return float(np.sum(a & b) / max(np.sum(a | b), 1))

    by_margin = {}
    for m in sorted({0.0, 0.01, 0.02, 0.05, 0.1, margin}):
        keep = np.abs(ref_logits) > m * scale
        by_margin[str(m)] = {
            "confident_fraction": float(keep.mean()),
            "iou": iou(keep),
        }
    return {
        "masks": int(ref_logits.shape[0]),
        "margin": margin,
        "confident_iou": by_margin[str(margin)]["iou"],
        "by_margin": by_margin,
        "largest_abs_logit": float(scale.max()),
        "max_abs_logit_difference": float(np.abs(ref_logits - got).max()),
        "first_set_image_s": seconds,
    }


def _device() -> str:
    """Where the backend puts a new tensor, e.g. `cuda:0` or `cpu`."""
    import keras

    x = keras.ops.zeros(())
    if hasattr(x, "devices"):  # JAX
        return ",".join(str(d) for d in x.devices())
    return str(x.device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--num-images",
        type=int,
        default=200,
        help="held-out shapes pictures (200: the full evaluation set)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.05,
        help="a pixel is confident when |float32 logit| exceeds this times "
        "the largest |float32 logit| of its mask",
    )
    p.add_argument("--skip-vit-b", action="store_true")
    p.add_argument("--skip-shapes", action="store_true")
    args = p.parse_args(argv)
    import keras

    result = {"backend": keras.backend.backend(), "device": _device()}
    if not args.skip_shapes:
        result["shapes"] = shapes_agreement(args.num_images)
        print(json.dumps(result["shapes"], indent=1), flush=True)
    if not args.skip_vit_b:
        result["vit_b"] = vit_b_agreement(args.margin)
        print(json.dumps(result["vit_b"], indent=1), flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
