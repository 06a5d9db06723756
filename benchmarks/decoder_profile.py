"""Where the mask decoder's time goes: each part timed alone, per prompt,
with its arithmetic (GFLOP) and the rate it reaches.

ViT-B decoder (random weights), one 64x64x256 image embedding, `--batch`
single-point prompts (7 tokens each). Each part runs compiled on its own
(`keras_sam.backend.compile.compile_inference`), on inputs of the shape it
sees inside the decoder; the parts' times add up to about the whole
decoder's. Matrix products are counted as 2 FLOP per multiply-add;
element-wise parts (norms, GELU) have no FLOP figure. Attention is counted
in the order of products the layer picks for the shapes
(`MultiHeadAttentionWithDownsampling.multiply_adds`). The last row is the
rate of one large float32 matrix product (1024x1024 by 1024x1024) on the
same backend and threads: what the cores reach when nothing but
multiply-adds is asked of them, the scale for the rates above.

Run from the repository root:
    python benchmarks/decoder_profile.py --backend jax --threads 2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16, help="prompts per call")
    args = p.parse_args(argv)
    _common.setup(args)

    import keras
    import numpy as np

    import keras_sam
    from keras_sam.backend.compile import compile_inference

    decoder = keras_sam.SAMMaskDecoder(
        hidden_size=256, num_layers=2, intermediate_dim=2048, num_heads=8
    )
    decoder.build()
    encoder = keras_sam.SAMPromptEncoder()
    encoder.build()
    b, hw, c = args.batch, 64 * 64, 256
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.normal(size=shape).astype("float32")

    image = normal(1, 64, 64, c)
    tokens = normal(b, 7, c)
    keys_1, keys_b, pe_flat = (
        normal(1, hw, c),
        normal(b, hw, c),
        normal(1, hw, c),
    )
    up_mid = normal(b, 128, 128, c // 4)
    up_out = normal(b, 256, 256, c // 8)
    hyper = normal(b, 4, c // 8)  # (B, T, C/8)
    bias_mid, bias_out = normal(c // 4), normal(c // 8)
    image_pe = keras.ops.convert_to_numpy(
        encoder.positional_embedding_layer.encode_image(
            encoder.image_embedding_size
        )[None]
    )
    points = rng.uniform(0, 1024, (b, 2, 2)).astype("float32")
    labels = np.tile(np.array([[1, -1]], "int32"), (b, 1))
    blocks = decoder.transformer.layers
    _, norm0, act0, _, act1 = decoder.output_upscaling.layers

    def proj(n_rows, n_in, n_out):
        return 2 * n_rows * n_in * n_out

    def attention(attn, nq, nk, bq, bk):
        """Per-prompt FLOP of one attention call, in the product order
        the layer picks for these shapes."""
        if bk == 1 and bq != 1:  # shared keys: queries folded
            nq, bq = nq * bq, 1
        path = attn._cheapest_path(nq, nk, bq, bk)
        return 2 * attn.multiply_adds(nq, nk, bq, bk)[path] / b

    def block(layer, image_batch):
        mlp = 2 * proj(7, c, layer.intermediate_dim)
        return (
            attention(layer.self_attention, 7, 7, b, b)
            + attention(
                layer.cross_attention_token_to_image, 7, hw, b, image_batch
            )
            + mlp
            + attention(
                layer.cross_attention_image_to_token, hw, 7, image_batch, b
            )
        )

    parts = [
        (
            "whole decoder (prompt encoder + decoder)",
            # As SAM's compiled decode: the image's positional encoding,
            # computed once, comes in (`SAM.image_positional_embeddings`).
            lambda pts, lab, pe: keras_sam.models.sam.decode_prompts(
                encoder,
                decoder,
                image,
                points=pts,
                labels=lab,
                image_positional_embeddings=pe,
            ),
            (points, labels, image_pe),
            None,
        ),
        (
            "transformer block 1 (image side shared)",
            lambda q, k: blocks[0](q, k, q, pe_flat),
            (tokens, keys_1),
            block(blocks[0], 1),
        ),
        (
            "transformer block 2",
            lambda q, k: blocks[1](q, k, q, pe_flat),
            (tokens, keys_b),
            block(blocks[1], b),
        ),
        (
            "final token-to-image attention",
            lambda q, k: decoder.transformer.final_attention_token_to_image(
                q, k + pe_flat, k
            ),
            (tokens, keys_b),
            attention(
                decoder.transformer.final_attention_token_to_image, 7, hw, b, b
            ),
        ),
        (
            "residual + layer norm of the image tokens (one, as run)",
            blocks[0]._fused_add_norm4,
            (keys_b, keys_b),
            None,
        ),
        (
            "upscaling and mask products (as the decoder runs them)",
            lambda k, h: decoder._upscale_and_predict(k, h, (b, 64, 64, c)),
            (keys_b, hyper),
            proj(hw, c, 4 * c // 4)
            + proj(4 * hw, c // 4, 4 * c // 8)
            + proj(4, 16 * hw, c // 8),
        ),
        (
            "  of which: bias + layer norm + GELU (128x128x64, as run)",
            decoder._fused_upscaling[0],
            (up_mid, bias_mid),
            None,
        ),
        (
            "  of which: bias + GELU (256x256x32, as run)",
            decoder._fused_upscaling[1],
            (up_out, bias_out),
            None,
        ),
        ("  of which: the same, op by op: layer norm", norm0, (up_mid,), None),
        ("  ... GELU (128x128x64)", act0, (up_mid,), None),
        ("  ... GELU (256x256x32)", act1, (up_out,), None),
    ]

    class Part(keras.layers.Layer):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn
            self.inner = [decoder, encoder]

        def call(self, *inputs):
            return self.fn(*inputs)

    rows = []
    for name, fn, inputs, flop in parts:
        part = Part(fn)
        run = compile_inference(part, part.call)
        ms = _common.time_fn(
            lambda r=run, i=inputs: r(*i), args.num_warmup, args.num_iters
        )
        per_prompt = ms / b
        rate = "" if flop is None else f"{flop / per_prompt / 1e6:.0f}"
        gflop = "" if flop is None else f"{flop / 1e9:.3f}"
        rows.append((name, f"{per_prompt:.2f}", gflop, rate))
    square = keras.random.normal((1024, 1024), seed=0)
    gemm = compile_inference(decoder, lambda x: keras.ops.matmul(x, x))
    ms = _common.time_fn(lambda: gemm(square), args.num_warmup, args.num_iters)
    flop = 2 * 1024**3
    rows.append(
        (
            "for scale: one 1024x1024 by 1024x1024 product",
            f"{ms:.2f} (per call)",
            f"{flop / 1e9:.3f}",
            f"{flop / ms / 1e6:.0f}",
        )
    )
    text = _common.table(
        rows, ("part", "ms / prompt", "GFLOP / prompt", "GFLOP/s")
    )
    text += (
        f"\n\n{b} prompts per call. GFLOP are counted for the order of "
        "products each attention picks for these shapes "
        "(`MultiHeadAttentionWithDownsampling._cheapest_path`); block 1's "
        "shared image-side projections are spread over the prompts."
    )
    _common.report(
        f"Mask decoder profile ({keras.backend.backend()})", text, args
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
