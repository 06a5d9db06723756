"""Prompt encoder + mask decoder latency: ours vs the references.

Cases (ViT-B decoder, 64x64 image embedding, fp32): one point (with the
official padding point), one box, and 64 prompts of one point each on one
image. Every system gets the same weights (random, seeded, converted from the
official modules) and the same inputs; outputs are checked against the
official eager result before anything is timed.

Besides the official PyTorch modules (eager and `torch.compile`), the
references are Hugging Face transformers `SamModel` (compiled, SDPA) and the
official ONNX export in onnxruntime (see `benchmarks/_references.py`); each is
skipped, with a note, when its package is missing or its flag is given.

Run from the repository root:
    python benchmarks/decoder.py --backend jax --threads 2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402
from benchmarks import _references  # noqa: E402


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--no-torch-compile",
        action="store_true",
        help="skip torch.compile: no official torch.compile row, and the "
        "HF reference runs eager",
    )
    p.add_argument(
        "--no-hf",
        action="store_true",
        help="skip the Hugging Face transformers SamModel reference",
    )
    p.add_argument(
        "--no-onnx",
        action="store_true",
        help="skip the official ONNX export (onnxruntime) reference",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="also time ours with the decoder in bfloat16 (mixed_bfloat16, "
        "as precision='bfloat16'; docs/precision.md)",
    )
    args = p.parse_args(argv)
    _common.setup(args)

    import keras
    import numpy as np
    import torch

    import keras_sam
    from keras_sam.backend.compile import compile_inference
    from keras_sam.models.sam import decode_prompts
    from support.reference import official

    device = _common.torch_device(args)
    bound = _common.parity_bound(args)
    ref_encoder = official.make_prompt_encoder(seed=0).to(device)
    ref_decoder = official.make_mask_decoder(seed=1).to(device)
    encoder = keras_sam.SAMPromptEncoder()
    decoder = keras_sam.SAMMaskDecoder(
        hidden_size=256, num_layers=2, intermediate_dim=2048, num_heads=8
    )
    keras_sam.load_official_weights(encoder, ref_encoder.state_dict())
    keras_sam.load_official_weights(decoder, ref_decoder.state_dict())

    class PromptToMask(keras.layers.Layer):
        def __init__(self, encoder, decoder):
            super().__init__()
            self.encoder, self.decoder = encoder, decoder

        def call(self, image_embeddings, points=None, labels=None, boxes=None):
            prompts = self.encoder(points=points, labels=labels, boxes=boxes)
            return self.decoder(image_embeddings=image_embeddings, **prompts)

    class OursPromptToMask(PromptToMask):
        # What SAM's compiled decode (hence SAMPredictor) runs: the image's
        # positional encoding, which depends on the weights alone, is
        # computed once and passed in (`SAM.image_positional_embeddings`).
        def call(
            self,
            image_embeddings,
            points=None,
            labels=None,
            boxes=None,
            image_positional_embeddings=None,
        ):
            return decode_prompts(
                self.encoder,
                self.decoder,
                image_embeddings,
                points=points,
                labels=labels,
                boxes=boxes,
                image_positional_embeddings=image_positional_embeddings,
            )

    def compiled_ours(layer):
        compiled = compile_inference(layer, layer.call)
        kept = encoder.positional_embedding_layer.encode_image(
            encoder.image_embedding_size
        )[None]
        return lambda embedding, **prompts: compiled(
            embedding, image_positional_embeddings=kept, **prompts
        )

    ours_layer = OursPromptToMask(encoder, decoder)
    ours = compiled_ours(ours_layer)
    ours_bf16 = None
    if args.bf16:
        from keras_sam.models.precision import dtype_policy

        decoder_bf16 = keras_sam.SAMMaskDecoder(
            hidden_size=256,
            num_layers=2,
            intermediate_dim=2048,
            num_heads=8,
            dtype=dtype_policy("bfloat16"),
        )
        keras_sam.load_official_weights(decoder_bf16, ref_decoder.state_dict())
        bf16_layer = OursPromptToMask(encoder, decoder_bf16)
        ours_bf16 = compiled_ours(bf16_layer)

    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(1, 64, 64, 256)).astype("float32")
    point = rng.uniform(0, 1024, (1, 1, 2)).astype("float32")
    many = rng.uniform(0, 1024, (64, 1, 2)).astype("float32")
    pad_xy = np.zeros((1, 1, 2), "float32")

    def with_pad(pts):
        b = pts.shape[0]
        xy = np.concatenate([pts, np.repeat(pad_xy, b, 0)], axis=1)
        lab = np.tile(np.array([[1, -1]], "int32"), (b, 1))
        return xy, lab

    cases = {
        "1 point": dict(
            zip(("points", "labels"), with_pad(point), strict=True)
        ),
        "1 box": dict(
            boxes=np.array([[[[200.0, 300.0], [600.0, 700.0]]]], "float32")
        ),
        "64 prompts": dict(
            zip(("points", "labels"), with_pad(many), strict=True)
        ),
    }

    emb_t = torch.from_numpy(official.nhwc_to_nchw(embedding)).to(device)

    def official_fn(ref_enc, ref_dec):
        def run(points=None, labels=None, boxes=None):
            with torch.no_grad():
                pts = None if points is None else (points, labels)
                sparse, dense = ref_enc(points=pts, boxes=boxes, masks=None)
                return ref_dec(
                    image_embeddings=emb_t,
                    image_pe=ref_enc.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )

        return run

    def to_torch(inputs):
        """Official inputs: boxes (B, 4), points without our padding point
        (the official encoder appends it itself)."""
        out = {}
        for k, v in inputs.items():
            t = torch.from_numpy(v).to(device)
            if k == "boxes":
                t = t.reshape(t.shape[0], 4)
            elif k in ("points", "labels"):
                t = t[:, :-1].contiguous()
            out[k] = t
        return out

    def official_outputs(result):
        return official.to_numpy(result[0]), official.to_numpy(result[1])

    official_eager = official_fn(ref_encoder, ref_decoder)
    references = [
        _references.Reference(
            "official eager", to_torch, official_eager, official_outputs
        )
    ]
    if not args.no_torch_compile:
        references.append(
            _references.Reference(
                "official torch.compile",
                to_torch,
                torch.compile(official_fn(ref_encoder, ref_decoder)),
                official_outputs,
            )
        )
    emb_nchw = official.nhwc_to_nchw(embedding)
    if args.no_hf:
        pass
    elif missing := _references.missing("transformers"):
        print(f"note: {missing[0]} not installed; skipping HF", file=sys.stderr)
    else:
        references.append(
            _references.hf_reference(
                ref_encoder,
                ref_decoder,
                emb_nchw,
                device,
                compile=not args.no_torch_compile,
                cases=list(cases.values()),
            )
        )
    if args.no_onnx:
        pass
    elif missing := _references.missing("onnx", "onnxruntime"):
        print(
            f"note: {', '.join(missing)} not installed; skipping ONNX",
            file=sys.stderr,
        )
    else:
        try:
            references.append(
                _references.onnx_reference(
                    ref_encoder,
                    ref_decoder,
                    emb_nchw,
                    args.threads,
                    args.device,
                )
            )
        except RuntimeError as e:  # e.g. no CUDA provider for --device gpu
            print(f"note: skipping ONNX: {e}", file=sys.stderr)
    systems = {r.name: r for r in references}

    hub = None
    if keras.backend.backend() != "jax":
        pass
    elif missing := _references.missing("keras_hub"):
        print(
            f"note: {missing[0]} not installed; skipping KerasHub",
            file=sys.stderr,
        )
    else:
        import keras_hub

        hub_enc = keras_hub.layers.SAMPromptEncoder()
        hub_dec = keras_hub.layers.SAMMaskDecoder(
            hidden_size=256, num_layers=2, intermediate_dim=2048, num_heads=8
        )
        hub_enc.build()
        hub_dec.build()
        for a, b in zip(
            encoder.weights, _hub_encoder_order(hub_enc), strict=True
        ):
            b.assign(a)
        _copy_decoder(decoder, hub_dec)
        hub_layer = PromptToMask(hub_enc, hub_dec)
        hub = compile_inference(hub_layer, hub_layer.call)

    rows = []
    results = {}
    for case, inputs in cases.items():
        expected = official_eager(**to_torch(inputs))
        ref_masks = official.to_numpy(expected[0])
        got = ours(embedding, **inputs)
        masks = keras.ops.convert_to_numpy(got["masks"])[:, 1:]
        err = np.abs(masks - ref_masks).max() / np.abs(ref_masks).max()
        print(
            f"check {case}: ours: masks {err:.1e}"
            " (max abs error / max abs official)",
            file=sys.stderr,
        )
        if err > bound:
            raise SystemExit(f"{case}: ours differ from official by {err:.2e}")
        for name, ref in systems.items():
            if ref.run is official_eager:
                continue
            got_masks, got_iou = ref.outputs(ref.run(**ref.prepare(inputs)))
            ref_iou = official.to_numpy(expected[1])
            errs = [
                np.abs(a - b).max() / np.abs(b).max()
                for a, b in ((got_masks, ref_masks), (got_iou, ref_iou))
            ]
            print(
                f"check {case}: {name}: masks {errs[0]:.1e}, iou {errs[1]:.1e}"
                " (max abs error / max abs official)",
                file=sys.stderr,
            )
            if max(errs) > bound:
                raise SystemExit(
                    f"{case}: {name} differs from official by {max(errs):.2e}"
                )
        timings = {
            "ours": _common.time_fn(
                lambda i=inputs: ours(embedding, **i),
                args.num_warmup,
                args.num_iters,
            )
        }
        if ours_bf16 is not None:
            bf16 = keras.ops.convert_to_numpy(
                ours_bf16(embedding, **inputs)["masks"]
            )[:, 1:]
            bf16_err = np.abs(bf16 - ref_masks).max() / np.abs(ref_masks).max()
            print(
                f"check {case}: ours bfloat16: masks {bf16_err:.1e}"
                " (max abs error / max abs official)",
                file=sys.stderr,
            )
            timings["ours, decoder in bfloat16"] = _common.time_fn(
                lambda i=inputs: ours_bf16(embedding, **i),
                args.num_warmup,
                args.num_iters,
            )
        if hub is not None:
            timings["KerasHub layers (same backend, jit)"] = _common.time_fn(
                lambda i=inputs: hub(embedding, **i),
                args.num_warmup,
                args.num_iters,
            )
        for name, ref in systems.items():
            r_inputs = ref.prepare(inputs)
            timings[name] = _common.time_fn(
                lambda f=ref.run, i=r_inputs: f(**i),
                args.num_warmup,
                args.num_iters,
            )
        results[case] = timings

    names = list(results["1 point"])
    for name in names:
        row = [name]
        for case in cases:
            ms = results[case][name]
            cell = f"{ms:.1f} ms"
            if case == "64 prompts":
                cell += f" ({64000 / ms:.0f} prompts/s)"
            row.append(cell)
        rows.append(tuple(row))
    ratio_row = ["best reference / ours (speed-up)"]
    for case in cases:
        best = min(
            v for k, v in results[case].items() if not k.startswith("ours")
        )
        ratio_row.append(f"{best / results[case]['ours']:.2f}x")
    rows.append(tuple(ratio_row))
    text = _common.table(rows, ("system", *cases))
    _common.report("Prompt encoder + mask decoder (ViT-B)", text, args)
    return 0


def _hub_encoder_order(hub_enc):
    """KerasHub prompt-encoder variables in our variable order."""
    names = [
        "positional_embedding_layer",
        "background_point_embed",
        "foreground_point_embed",
        "top_left_corner_embed",
        "bottom_right_corner_embed",
        "not_a_point_embed",
        "no_mask_embed",
        "mask_downscaler",
    ]
    out = []
    for n in names:
        out += getattr(hub_enc, n).weights
    return out


def _copy_decoder(ours, hub):
    pairs = [
        (ours.transformer, hub.transformer),
        (ours.iou_token, hub.iou_token),
        (ours.mask_tokens, hub.mask_tokens),
        (ours.output_upscaling, hub.output_upscaling),
        (ours.iou_prediction_head, hub.iou_prediction_head),
    ] + list(
        zip(
            ours.output_hypernetworks_mlps,
            hub.output_hypernetworks_mlps,
            strict=True,
        )
    )
    for a, b in pairs:
        for x, y in zip(a.weights, b.weights, strict=True):
            y.assign(x)


if __name__ == "__main__":
    sys.exit(main())
