"""`SAMPredictor.predict` end to end at the original resolution: ours vs the
official `SamPredictor.predict`, from a cached image embedding.

A 1500x2250 image (the issue's size), ViT-B prompt encoder and decoder
(random seeded weights converted from the official modules), one point,
multimask output: prompt scaling, decoding, and upscaling of the three masks
to 1500x2250 with thresholding. Outputs are compared before timing.

Run from the repository root:
    python benchmarks/predictor.py --backend jax --threads 2
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

# A tiny image encoder with the ViT-B output grid: the embedding is cached,
# so the encoder never runs; only its input size matters.
TINY_ENCODER = dict(
    hidden_size=16,
    num_layers=1,
    intermediate_dim=32,
    num_heads=2,
    global_attention_layer_indices=(0,),
    image_shape=(1024, 1024, 3),
    patch_size=16,
    num_output_channels=256,
    window_size=0,
)
PROMPT = dict(
    hidden_size=256,
    image_embedding_size=(64, 64),
    input_image_size=(1024, 1024),
)
DECODER = dict(
    hidden_size=256, num_layers=2, intermediate_dim=2048, num_heads=8
)


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=1500)
    p.add_argument("--width", type=int, default=2250)
    args = p.parse_args(argv)
    _common.setup(args)

    import numpy as np
    import torch

    import keras_sam
    from support.reference import official

    device = _common.torch_device(args)
    ref_model = official.make_sam(
        TINY_ENCODER, prompt_dim=256, decoder_mlp_dim=2048, decoder_heads=8
    )
    model = keras_sam.SAM.from_config_dicts(TINY_ENCODER, PROMPT, DECODER)
    keras_sam.load_official_weights(model, ref_model.state_dict())

    size = (args.height, args.width)
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(1, 64, 64, 256)).astype("float32")
    ours = keras_sam.SAMPredictor(model)
    ours.set_image_embedding(embedding, size)
    ref = official.SamPredictor(ref_model.to(device))
    ref.reset_image()
    ref.features = torch.from_numpy(official.nhwc_to_nchw(embedding)).to(device)
    ref.original_size = size
    ref.input_size = tuple(ref.transform.get_preprocess_shape(*size, 1024))
    ref.is_image_set = True

    prompt = dict(
        point_coords=np.array([[0.4 * args.width, 0.55 * args.height]]),
        point_labels=np.array([1]),
    )
    # The first calls: ours traces (and on JAX compiles) its programs.
    start = time.perf_counter()
    masks, scores, _ = _common.sync(ours.predict(**prompt))
    first_ours = 1000 * (time.perf_counter() - start)
    start = time.perf_counter()
    with torch.inference_mode():
        ref_masks, ref_scores, _ = _common.sync(ref.predict(**prompt))
    first_ref = 1000 * (time.perf_counter() - start)
    differ = float(np.mean(masks != ref_masks))
    # Pixels whose logit is within float error of the threshold may flip.
    bound = _common.parity_bound(args)
    if differ > bound or not np.allclose(scores, ref_scores, rtol=10 * bound):
        raise SystemExit(f"outputs differ: {differ:.2e} of mask pixels")

    def official_predict():
        with torch.inference_mode():
            return ref.predict(**prompt)

    timings = {
        "ours (SAMPredictor.predict)": _common.time_fn(
            lambda: ours.predict(**prompt), args.num_warmup, args.num_iters
        ),
        "official SamPredictor.predict (eager)": _common.time_fn(
            official_predict, args.num_warmup, args.num_iters
        ),
    }
    ours_ms = timings["ours (SAMPredictor.predict)"]
    rows = [
        (name, f"{ms:.1f} ms", f"{ms / ours_ms:.2f}x")
        for name, ms in timings.items()
    ]
    text = _common.table(rows, ("system", "median", "time / ours"))
    text += (
        f"\n\nMask pixels differing from the official: {differ:.1e} "
        "(all near the threshold). First call (ours traces and compiles): "
        f"ours {first_ours:.1f} ms, official {first_ref:.1f} ms."
    )
    title = (
        f"Predictor end to end, {args.height}x{args.width}, cached embedding"
    )
    _common.report(title, text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
