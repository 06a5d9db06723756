"""MobileSAM's TinyViT image encoder: ours vs ours on ViT-B, and vs the
official `TinyViT` (eager and `torch.compile`), 1024x1024, one image, fp32.

Same seeded random weights on both TinyViT sides (the official module's,
converted by `keras_sam.load_official_weights`), same normalised input;
the embeddings are compared before timing. Our ViT-B has random weights
(only its time is reported). Each system runs in a fresh subprocess.

Run from the repository root:
    python benchmarks/tiny_vit.py --backend tensorflow --threads 2
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

SYSTEMS = (
    "ours TinyViT",
    "ours ViT-B",
    "official TinyViT eager",
    "official TinyViT torch.compile",
)


def _measure(args, system: str) -> dict:
    """Time (and check) one system in this process."""
    import numpy as np
    import torch

    from keras_sam.models.presets import PRESETS
    from support.reference import mobile_sam as reference

    ref = reference.build_sam_vit_t().image_encoder
    reference.randomize_(ref, seed=0)
    ref.eval()
    image = np.random.default_rng(0).normal(size=(1, 1024, 1024, 3))
    image = image.astype("float32")
    image_t = torch.from_numpy(image.transpose(0, 3, 1, 2))
    with torch.inference_mode():
        # NCHW -> NHWC (1, 64, 64, 256)
        expected = ref(image_t).numpy().transpose(0, 2, 3, 1)

    if system.startswith("ours"):
        import keras

        import keras_sam
        from keras_sam.backend.compile import compile_inference

        if system == "ours TinyViT":
            config = PRESETS["mobile_sam"]["image_encoder"]
            encoder = keras_sam.TinyViTImageEncoder(**config)
            keras_sam.load_official_weights(encoder, reference.state_dict(ref))
        else:
            config = PRESETS["sam_vit_b"]["image_encoder"]
            encoder = keras_sam.SAMImageEncoder(**config)
            encoder.build()
        del ref
        fn = compile_inference(encoder, encoder.call)

        def run():
            return fn(image)

        def to_numpy(out):
            return keras.ops.convert_to_numpy(out)
    else:
        module = ref
        if system.endswith("torch.compile"):
            module = torch.compile(ref)

        def run():
            with torch.inference_mode():
                return module(image_t)

        def to_numpy(out):
            return out.numpy().transpose(0, 2, 3, 1)

    got = to_numpy(_common.sync(run()))
    err = None
    if system != "ours ViT-B":
        err = float(np.abs(got - expected).max() / np.abs(expected).max())
        if err > 1e-4:
            raise SystemExit(f"{system}: differs from official by {err:.2e}")
    ms = _common.time_fn(run, args.num_warmup, args.num_iters)
    return {"ms": ms, "error": err}


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--system", choices=SYSTEMS, help=argparse_hidden())
    p.add_argument(
        "--no-torch-compile",
        action="store_true",
        help="skip the official torch.compile reference",
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
        if not (system.endswith("torch.compile") and args.no_torch_compile)
    ]
    results = _common.run_children(__file__, systems, args)

    ours = results["ours TinyViT"]["ms"]
    rows = [
        (
            name,
            f"{r['ms']:.1f} ms",
            f"{r['ms'] / ours:.2f}x",
            "-" if r["error"] is None else f"{r['error']:.1e}",
        )
        for name, r in results.items()
    ]
    text = _common.table(
        rows,
        ("system", "median", "time / ours TinyViT", "max rel. error"),
    )
    title = "TinyViT image encoder (mobile_sam), 1024x1024, one image"
    _common.report(title, text, args)
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
