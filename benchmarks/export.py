"""The exported ONNX files in ONNX Runtime: ours vs the official export vs
our Keras path, at ViT-B sizes.

Decoder (prompt encoder + mask decoder + the four masks upscaled to a
480x640 picture, the official ONNX interface): our `decoder.onnx` in
ONNX Runtime, the official `SamOnnxModel` exported as its script does
(`torch.onnx`, opset 17, exported with `orig_im_size` 480x640 so that its
traced crop is right for this picture) in ONNX Runtime, and the same graph
as ours run by Keras (`DecoderExport`, TensorFlow). One point (with the
padding point) and 64 prompts of one point each, on one image embedding.

Image encoder (the 480x640 picture resized to 768x1024, uint8, in; the
embedding out, normalisation and padding included): our
`image_encoder.onnx` in ONNX Runtime vs the same graph run by Keras
(`ImageEncoderExport`). The official code exports no image encoder.

Every system has the same weights: an official ViT-B `Sam` with random
weights (fixed seed, made with the official code) converted by
`keras_sam.load_official_weights`. Outputs are checked against each other
before anything is timed. Runs on the TensorFlow backend (the exporters').

Run from the repository root:
    python benchmarks/export.py --threads 2
"""

import gc
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

PICTURE = (480, 640)
NUM_PROMPTS = 64


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--preset", default="sam_vit_b")
    args = p.parse_args(argv)
    if args.backend not in (None, "tensorflow"):
        p.error("--backend: the exporters run on tensorflow")
    if args.device != "cpu":
        p.error("--device: ONNX Runtime runs on the cpu here")
    args.backend = "tensorflow"
    _common.setup(args)

    import numpy as np
    import onnxruntime as ort
    import torch

    import keras_sam
    from keras_sam.backend.compile import compile_inference
    from keras_sam.export import export_model
    from keras_sam.export.decoder import DecoderExport
    from keras_sam.export.image_encoder import ImageEncoderExport
    from keras_sam.inference import transforms
    from keras_sam.models.presets import PRESETS
    from keras_sam.models.sam import SAM
    from support.fixtures import smooth_image
    from support.reference import official
    from support.reference.official_onnx import export_official_decoder

    preset = PRESETS[args.preset]
    decoder_config = preset["mask_decoder"]
    ref = official.make_preset_sam(preset, seed=0)
    model = SAM.from_config_dicts(
        preset["image_encoder"], preset["prompt_encoder"], decoder_config
    )
    keras_sam.load_official_weights(model, ref.state_dict())
    # The official export reads only the image encoder's input size: free
    # the official ViT before ours is exported (memory).
    img_size = ref.image_encoder.img_size
    del ref.image_encoder
    ref.image_encoder = _InputSize(img_size)
    gc.collect()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1

    def session(path):
        return ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    folder = tempfile.mkdtemp(prefix="keras_sam_bench_export.")
    export_model(model, folder)
    ours_decoder = session(os.path.join(folder, "decoder.onnx"))
    ours_encoder = session(os.path.join(folder, "image_encoder.onnx"))
    official_decoder = session(
        export_official_decoder(
            ref,
            os.path.join(folder, "official_decoder.onnx"),
            PICTURE,
            dynamic_batch=True,
        )
    )

    # Keras: the same graphs, compiled as the predictor compiles its parts.
    decoder_part = DecoderExport(model.prompt_encoder, model.mask_decoder)
    encoder_part = ImageEncoderExport(model.image_encoder)
    keras_decoder = compile_inference(decoder_part, decoder_part.call)
    keras_encoder = compile_inference(encoder_part, encoder_part.call)

    image = smooth_image(PICTURE + (3,))
    long_side = max(model.prompt_encoder.input_image_size)
    size = transforms.preprocess_shape(PICTURE, long_side)
    resized = transforms.resize_image(image, size)
    embedding = ours_encoder.run(None, {"image": resized})[0]
    expected = _numpy(keras_encoder({"image": resized})["image_embeddings"])
    _check("image encoder", embedding, expected, 1e-4)

    rng = np.random.default_rng(0)
    scale = max(size) / max(PICTURE)
    cases = {}
    many = f"{NUM_PROMPTS} prompts"
    for name, batch in (("1 point", 1), (many, NUM_PROMPTS)):
        clicks = rng.uniform(0, 1, (batch, 1, 2)) * [PICTURE[1], PICTURE[0]]
        coords = np.concatenate([clicks * scale, np.zeros((batch, 1, 2))], 1)
        labels = np.tile([[1.0, -1.0]], (batch, 1))
        cases[name] = {
            "image_embeddings": embedding,
            "point_coords": coords.astype(np.float32),
            "point_labels": labels.astype(np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(PICTURE, np.float32),
        }

    systems = {
        "ours: decoder.onnx, ONNX Runtime": lambda f: ours_decoder.run(None, f),
        "official export, ONNX Runtime": lambda f: official_decoder.run(
            None, f
        ),
        "ours: the same graph in Keras (TensorFlow)": lambda f: [
            _numpy(v) for v in keras_decoder(f).values()
        ],
    }
    for case, feed in cases.items():
        want = ours_decoder.run(None, feed)
        theirs = official_decoder.run(None, feed)
        keras_out = keras_decoder(feed)
        _check(f"{case}: low-res, official", want[2], theirs[2], 1e-4)
        _check(f"{case}: iou, official", want[1], theirs[1], 1e-4)
        low_res = _numpy(keras_out["low_res_masks"])
        _check(f"{case}: low-res, Keras", want[2], low_res)
        flipped = np.mean((want[0] > 0) != (theirs[0] > 0))
        print(f"check {case}: mask pixels flipped vs official: {flipped:.1e}")
    del want, theirs, keras_out, low_res  # 64 x 4 masks at 480x640 each
    gc.collect()

    load_before = os.getloadavg()[0]
    ms = {name: {} for name in systems}
    for case, feed in cases.items():
        timed = _interleaved(
            {n: (lambda fn=fn, f=feed: fn(f)) for n, fn in systems.items()},
            args.num_warmup,
            args.num_iters,
        )
        for name, value in timed.items():
            ms[name][case] = value
    encoders = {
        "ours: image_encoder.onnx, ONNX Runtime": lambda: ours_encoder.run(
            None, {"image": resized}
        ),
        "ours: the same graph in Keras (TensorFlow)": lambda: keras_encoder(
            {"image": resized}
        ),
    }
    encoder_ms = _interleaved(encoders, args.num_warmup, args.num_iters)
    load = (load_before, os.getloadavg()[0])

    ours = "ours: decoder.onnx, ONNX Runtime"
    rows = []
    for name, by_case in ms.items():
        cells = [f"{v:.1f} ms" for v in by_case.values()]
        ratios = [f"{by_case[c] / ms[ours][c]:.2f}x" for c in by_case]
        rows.append((name, *cells, *ratios))
    headers = (
        "decoder (4 masks at 480x640)",
        *cases,
        *(f"{c}: time / ours ONNX" for c in cases),
    )
    text = _common.table(rows, headers)
    onnx_ms = encoder_ms["ours: image_encoder.onnx, ONNX Runtime"]
    rows = [
        (name, f"{v:.0f} ms", f"{v / onnx_ms:.2f}x")
        for name, v in encoder_ms.items()
    ]
    text += "\n\n" + _common.table(
        rows, ("image encoder (768x1024 uint8 in)", "time", "/ ours ONNX")
    )
    text += (
        f"\n\nViT-B ({args.preset}), random official-layout weights (seed "
        f"0), {args.num_warmup} warm-up, median of {args.num_iters}; ONNX "
        f"Runtime {ort.__version__}, torch {torch.__version__} for the "
        "official export. The systems take turns, one call each per round. "
        f"Load average {load[0]:.1f} before, {load[1]:.1f} after."
    )
    _common.report(f"Exported ONNX files ({args.preset})", text, args)
    return 0


class _InputSize:
    """Stands for the official image encoder: `SamOnnxModel` reads its
    `img_size` only."""

    def __init__(self, img_size: int):
        self.img_size = img_size


def _interleaved(fns: dict, num_warmup: int, num_iters: int) -> dict:
    """Median milliseconds of each of `fns` (name -> callable), warmed up,
    then timed in rounds of one call each, so that a change of load on
    the machine falls on every system alike."""
    import statistics
    import time

    for fn in fns.values():
        for _ in range(num_warmup):
            _common.sync(fn())
    times = {name: [] for name in fns}
    for _ in range(num_iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            _common.sync(fn())
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def _numpy(x):
    import numpy as np

    return np.asarray(x)


def _check(what: str, actual, expected, rtol: float = 1e-4) -> None:
    import numpy as np

    err = float(
        np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)
    )
    print(f"check {what}: {err:.1e} (max abs error / max abs)", flush=True)
    if err > rtol:
        raise SystemExit(f"{what}: differ by {err:.2e} > {rtol:.0e}")


if __name__ == "__main__":
    sys.exit(main())
