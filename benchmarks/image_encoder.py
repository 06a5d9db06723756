"""Image encoder (ViT-B at 1024x1024 by default): ours vs the official
`ImageEncoderViT`
(eager and `torch.compile`), one image, fp32.

Same random seeded weights on both sides (the official module's, converted
by `keras_sam.load_official_weights`), same normalised input; the embeddings
are compared before timing. Each system runs in a fresh subprocess. Peak
memory is not reported: each child first runs the official forward pass for
the reference output, which sets the process's peak before the timed system
runs (the first runs printed a meaningless "peak memory" column).

Run from the repository root:
    python benchmarks/image_encoder.py --backend jax --threads 2
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

SYSTEMS = ("ours", "official eager", "official torch.compile")


def _config(preset: str) -> dict:
    from keras_sam.models.presets import PRESETS

    return dict(PRESETS[preset]["image_encoder"])


def _measure(args, system: str) -> dict:
    """Time (and check) one system in this process."""
    import numpy as np
    import torch

    from support.reference import official

    config = _config(args.preset)
    device = _common.torch_device(args)
    ref = official.make_image_encoder(config, seed=0).to(device)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, *config["image_shape"])).astype("float32")
    image_t = torch.from_numpy(official.nhwc_to_nchw(image)).to(device)
    with torch.inference_mode():
        # NCHW -> NHWC (1, 64, 64, 256)
        expected = official.to_numpy(ref(image_t)).transpose(0, 2, 3, 1)

    if system == "ours":
        import keras

        import keras_sam
        from keras_sam.backend.compile import compile_inference
        from keras_sam.models.precision import dtype_policy

        encoder = keras_sam.SAMImageEncoder(
            **config, dtype=dtype_policy(args.precision)
        )
        keras_sam.load_official_weights(encoder, ref.state_dict())
        del ref
        fn = compile_inference(encoder, encoder.call)

        def run():
            return fn(image)

        def to_numpy(out):
            return keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    else:
        module = ref
        if system == "official torch.compile":
            module = torch.compile(ref)

        def run():
            with torch.inference_mode():
                return module(image_t)

        def to_numpy(out):
            return official.to_numpy(out).transpose(0, 2, 3, 1)

    got = to_numpy(_common.sync(run()))
    err = float(np.abs(got - expected).max() / np.abs(expected).max())
    if err > _common.parity_bound(args, args.precision):
        raise SystemExit(f"{system}: differs from official by {err:.2e}")
    ms = _common.time_fn(run, args.num_warmup, args.num_iters)
    return {"ms": ms, "error": err}


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--system", choices=SYSTEMS, help=argparse_hidden())
    p.add_argument(
        "--preset",
        default="sam_vit_b",
        help="whose image encoder (sam_shapes: a quick smoke test)",
    )
    p.add_argument(
        "--no-torch-compile",
        action="store_true",
        help="skip the official torch.compile reference",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="ours in float32 or mixed_bfloat16 (docs/precision.md)",
    )
    p.add_argument(
        "--ours-only",
        action="store_true",
        help="time ours only (the official forward still checks it)",
    )
    args = p.parse_args(argv)
    if args.system:  # child process: one system, JSON on stdout
        _common.setup(args)
        print(json.dumps(_measure(args, args.system)))
        return 0

    _common.setup_env_only(args)
    systems = [
        system
        for system in SYSTEMS
        if not (system == "official torch.compile" and args.no_torch_compile)
        and not (system != "ours" and args.ours_only)
    ]
    results = _common.run_children(
        __file__,
        systems,
        args,
        ("--preset", args.preset, "--precision", args.precision),
    )

    ours = results["ours"]["ms"]
    rows = [
        (
            name,
            f"{r['ms']:.1f} ms",
            f"{r['ms'] / ours:.2f}x",
            f"{r['error']:.1e}",
        )
        for name, r in results.items()
    ]
    text = _common.table(
        rows,
        ("system", "median", "time / ours", "max rel. error"),
    )
    h, w = _config(args.preset)["image_shape"][:2]
    title = f"Image encoder ({args.preset}), {h}x{w}, one image"
    if args.precision != "float32":
        title += f", ours in {args.precision}"
    if args.ours_only:
        title += ", ours only"
    _common.report(title, text, args)
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
