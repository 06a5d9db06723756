"""The image encoder with int8 dynamic quantization of its matrix products
against float32, ours only, same process.

Keras' int8 mode (`Dense.quantize("int8")`: int8 kernels with per-channel
scales, activations quantized on the fly) applied to every `Dense` layer of
the image encoder, the layers that hold its matrix products (attention
projections and MLPs); the patch embedding and the neck stay float32. The
float32 encoder is timed first, then the same layers quantized in place
(no second copy of the weights), each as one compiled function on the same
random input; the table gives their medians and the largest difference of
the embeddings relative to the largest float32 value. Whether int8 pays
depends on int8 dot-product instructions (AVX-VNNI, AVX-512 VNNI, AMX): the
CPU flags are printed with the table.

Run from the repository root:
    python benchmarks/int8_encoder.py --backend tensorflow --threads 2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

# The instruction-set flags that decide int8 and bfloat16 speed.
_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "avx512_bf16",
)


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            line = next(x for x in f if x.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(line.split(":", 1)[1].split())
    return ", ".join(f for f in _FLAGS if f in have) or "none of " + str(_FLAGS)


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.set_defaults(num_warmup=2, num_iters=5)
    p.add_argument("--preset", default="sam_shapes")
    args = p.parse_args(argv)
    _common.setup(args)
    import keras
    import numpy as np

    import keras_sam
    from keras_sam.backend.compile import compile_inference

    bundled = args.preset == "sam_shapes"
    model = keras_sam.SAM.from_preset(args.preset, weights=bundled)
    model.build()
    encoder = model.image_encoder
    size = model.prompt_encoder.input_image_size
    x = np.random.default_rng(0).uniform(-2, 2, (1, *size, 3))
    x = x.astype("float32")

    def run(fn):
        return keras.ops.convert_to_numpy(fn(x))

    float32 = compile_inference(encoder, lambda images: encoder(images))
    reference = run(float32)
    t_float32 = _common.time_fn(
        lambda: float32(x), args.num_warmup, args.num_iters
    )
    dense = [
        layer
        for layer in encoder._flatten_layers()
        if isinstance(layer, keras.layers.Dense)
    ]
    for layer in dense:
        layer.quantize("int8")
    int8 = compile_inference(encoder, lambda images: encoder(images))
    quantized = run(int8)
    t_int8 = _common.time_fn(lambda: int8(x), args.num_warmup, args.num_iters)
    error = float(np.abs(quantized - reference).max() / np.abs(reference).max())
    rows = [
        ("float32", f"{t_float32:.1f} ms", ""),
        (
            f"int8 ({len(dense)} Dense layers)",
            f"{t_int8:.1f} ms",
            f"{error:.1e}",
        ),
    ]
    text = _common.table(rows, ("encoder", "median", "max rel. difference"))
    speed = t_float32 / t_int8
    text += (
        f"\n\nint8 / float32 speed: {speed:.2f}x "
        f"({'faster' if speed > 1 else 'slower'}); preset {args.preset}, "
        f"input {size[0]}x{size[1]}; CPU flags: {cpu_flags()}."
    )
    title = f"int8 vs float32 (image encoder, {args.preset})"
    _common.report(title, text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
