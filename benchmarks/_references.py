"""Reference systems of the decoder benchmark beyond the official PyTorch one.

* Hugging Face transformers `SamModel` (ViT-B `SamConfig()`, SDPA
  attention, the official LayerNorm epsilon; see `hf_reference`), fed the
  official weights through a renaming table written from the two modules'
  `state_dict()` keys, and run from image embeddings (prompt encoder + mask
  decoder only), compiled with `torch.compile`.
* The official ONNX export, `segment_anything.utils.onnx.SamOnnxModel` as in
  the official `scripts/export_onnx_model.py` (legacy TorchScript exporter,
  opset 17), run in onnxruntime, with the prompt batch axis made dynamic and
  the low-resolution (256x256) logits as output; see `LowResSamOnnxModel`.

Every reference takes the benchmark's inputs in our format (numpy; points
`(B, N, 2)` ending with the official padding point `(0, 0)` labelled -1, or
boxes `(B, 1, 2, 2)`) through `prepare`, outside the timed call, and gives
back the three multimask logits `(B, 3, 256, 256)` and their IoU predictions
`(B, 3)` through `outputs`, for the check against the official eager result.
"""

import dataclasses
import importlib.util
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass
class Reference:
    """A system of the benchmark: `run(**prepare(inputs))` is what is timed;
    `outputs(result)` gives `(masks (B, 3, H, W), iou (B, 3))` as numpy."""

    name: str
    prepare: Callable[[dict], dict]
    run: Callable[..., Any]
    outputs: Callable[[Any], tuple[np.ndarray, np.ndarray]]


def missing(*modules: str) -> list[str]:
    """The modules of `modules` that are not installed."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def split_prompts(inputs: dict) -> dict:
    """Our inputs as plain prompts: `points` `(B, N, 2)` and `labels`
    `(B, N)` without the trailing padding point, or `boxes` `(B, 4)`."""
    if "boxes" in inputs:
        boxes = np.asarray(inputs["boxes"], "float32")
        return {"boxes": boxes.reshape(boxes.shape[0], 4)}
    points = np.asarray(inputs["points"], "float32")
    labels = np.asarray(inputs["labels"])
    pad_ok = (labels[:, -1] == -1).all() and (points[:, -1] == 0).all()
    if not pad_ok:
        raise ValueError("point inputs must end with the padding point")
    return {"points": points[:, :-1], "labels": labels[:, :-1]}


# --------------------------------------------------------------------------
# Hugging Face transformers SamModel

# Official name -> transformers `SamModel` name, as (regex, template) pairs
# matched against whole keys, first match wins. Official keys are prefixed
# with `prompt_encoder.` / `mask_decoder.` (the attributes of `Sam`, as in
# `SamModel`). Written by reading both modules' `state_dict()` key lists.
_PE = r"prompt_encoder\."
_MD = r"mask_decoder\."
_WB = r"(weight|bias)"
_HF_RENAMES = [
    # Prompt encoder.
    (
        _PE + r"pe_layer\.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    (
        _PE + r"point_embeddings\.(\d+)\.weight",
        r"prompt_encoder.point_embed.\1.weight",
    ),
    (
        _PE + r"(not_a_point_embed|no_mask_embed)\.weight",
        r"prompt_encoder.\1.weight",
    ),
    # mask_downscaling = Conv, LayerNorm2d, GELU, Conv, LayerNorm2d, GELU, Conv
    (
        _PE + r"mask_downscaling\.0\." + _WB,
        r"prompt_encoder.mask_embed.conv1.\1",
    ),
    (
        _PE + r"mask_downscaling\.1\." + _WB,
        r"prompt_encoder.mask_embed.layer_norm1.\1",
    ),
    (
        _PE + r"mask_downscaling\.3\." + _WB,
        r"prompt_encoder.mask_embed.conv2.\1",
    ),
    (
        _PE + r"mask_downscaling\.4\." + _WB,
        r"prompt_encoder.mask_embed.layer_norm2.\1",
    ),
    (
        _PE + r"mask_downscaling\.6\." + _WB,
        r"prompt_encoder.mask_embed.conv3.\1",
    ),
    # Mask decoder: tokens and two-way transformer.
    (_MD + r"(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
    (
        _MD + r"transformer\.layers\.(\d+)\.norm([1-4])\." + _WB,
        r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",
    ),
    (
        _MD
        + r"transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image"
        r"|cross_attn_image_to_token)\.(q|k|v|out)_proj\." + _WB,
        r"mask_decoder.transformer.layers.\1.\2.\3_proj.\4",
    ),
    (
        _MD + r"transformer\.layers\.(\d+)\.mlp\.(lin1|lin2)\." + _WB,
        r"mask_decoder.transformer.layers.\1.mlp.\2.\3",
    ),
    (
        _MD
        + r"transformer\.final_attn_token_to_image\.(q|k|v|out)_proj\."
        + _WB,
        r"mask_decoder.transformer.final_attn_token_to_image.\1_proj.\2",
    ),
    (
        _MD + r"transformer\.norm_final_attn\." + _WB,
        r"mask_decoder.transformer.layer_norm_final_attn.\1",
    ),
    # output_upscaling = ConvTranspose, LayerNorm2d, GELU, ConvTranspose, GELU
    (_MD + r"output_upscaling\.0\." + _WB, r"mask_decoder.upscale_conv1.\1"),
    (
        _MD + r"output_upscaling\.1\." + _WB,
        r"mask_decoder.upscale_layer_norm.\1",
    ),
    (_MD + r"output_upscaling\.3\." + _WB, r"mask_decoder.upscale_conv2.\1"),
    # 3-layer MLPs: official layers.{0,1,2} -> proj_in, layers.0, proj_out.
    (
        _MD + r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)"
        r"\.layers\.0\." + _WB,
        r"mask_decoder.\1.proj_in.\2",
    ),
    (
        _MD + r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)"
        r"\.layers\.1\." + _WB,
        r"mask_decoder.\1.layers.0.\2",
    ),
    (
        _MD + r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)"
        r"\.layers\.2\." + _WB,
        r"mask_decoder.\1.proj_out.\2",
    ),
]
# `SamModel` keeps a second copy of the random Fourier matrix for the dense
# (image-wide) positional encoding; transformers ties it to this one.
_HF_TIED = {
    "shared_image_embedding.positional_embedding": (
        "prompt_encoder.shared_embedding.positional_embedding"
    )
}
# Not ours to fill: the image encoder is not run (image embeddings are given).
_HF_UNUSED_PREFIX = "vision_encoder."


def _rename_official(key: str) -> str:
    for pattern, template in _HF_RENAMES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template)
    raise KeyError(f"no transformers name for official key {key!r}")


def load_official_into_hf(model, ref_encoder, ref_decoder) -> None:
    """Copy official prompt encoder / mask decoder weights into a
    transformers `SamModel`, all or nothing: every official key must map to
    a distinct transformers key of the same shape, and every transformers
    prompt-encoder / mask-decoder key must be covered, before anything is
    copied."""
    import torch

    source = {
        f"prompt_encoder.{k}": v for k, v in ref_encoder.state_dict().items()
    }
    source.update(
        {f"mask_decoder.{k}": v for k, v in ref_decoder.state_dict().items()}
    )
    target = model.state_dict()
    wanted = {
        k
        for k in target
        if not k.startswith(_HF_UNUSED_PREFIX) and k not in _HF_TIED
    }
    renamed = {_rename_official(k): k for k in source}
    if len(renamed) != len(source):
        raise ValueError("official keys do not map one to one")
    if set(renamed) != wanted:
        raise ValueError(
            "official and transformers keys differ: "
            f"unmapped transformers keys {sorted(wanted - set(renamed))}, "
            f"unknown targets {sorted(set(renamed) - wanted)}"
        )
    pairs = [(hf, source[off]) for hf, off in renamed.items()]
    pairs += [
        (alias, source[renamed[name]]) for alias, name in _HF_TIED.items()
    ]
    for hf, value in pairs:
        if tuple(target[hf].shape) != tuple(value.shape):
            raise ValueError(
                f"{hf}: shape {tuple(target[hf].shape)} != {tuple(value.shape)}"
            )
    with torch.no_grad():
        for hf, value in pairs:
            target[hf].copy_(value)


def _import_transformers_sam():
    """Import transformers' SAM while `support.reference.official`'s
    torchvision stub (a module without `__spec__`, which transformers'
    package probes reject) is hidden; transformers caches "no torchvision"."""
    stub = {
        k: sys.modules.pop(k)
        for k in list(sys.modules)
        if (k == "torchvision" or k.startswith("torchvision."))
        and getattr(sys.modules[k], "__spec__", None) is None
    }
    try:
        import transformers
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()  # cached while hidden
    finally:
        sys.modules.update(stub)
    return transformers


def hf_reference(
    ref_encoder,
    ref_decoder,
    embedding_nchw: np.ndarray,
    device: str,
    compile: bool,
    cases: list[dict],
) -> Reference:
    """transformers `SamModel(SamConfig())` from image embeddings.

    One departure from the default config: the mask decoder's
    `layer_norm_eps` (the two-way transformer's `layer_norm1..4`) is the
    official 1e-5 (PyTorch's `nn.LayerNorm` default) instead of 1e-6, so the
    check compares the same function (with 1e-6 the outputs differ from the
    official ones by ~8e-5 relative; the cost is the same).

    Runs `SamModel.forward(image_embeddings=..., input_points=...)` (its
    prompt encoder, which appends the same `(0, 0)` / -1 padding point as the
    official one when no box is given, and its mask decoder) with
    `multimask_output=True`, which returns the three multimask outputs.
    With `compile`, the call is `torch.compile`d and tried once on every
    case; on failure it falls back to eager, and the name says so.
    """
    import torch

    transformers = _import_transformers_sam()
    decoder_config = {"layer_norm_eps": 1e-5}
    try:
        config = transformers.SamConfig(
            mask_decoder_config=decoder_config, attn_implementation="sdpa"
        )
    except (TypeError, ValueError):
        config = transformers.SamConfig(mask_decoder_config=decoder_config)
    model = transformers.SamModel(config).eval()
    attn = model.config._attn_implementation
    load_official_into_hf(model, ref_encoder, ref_decoder)
    model = model.to(device)
    emb = torch.from_numpy(np.ascontiguousarray(embedding_nchw)).to(device)

    def prepare(inputs):
        prompts = split_prompts(inputs)
        if "boxes" in prompts:
            boxes = torch.from_numpy(prompts["boxes"]).to(device)
            return {"input_boxes": boxes[None]}  # (image batch 1, B, 4)
        points = torch.from_numpy(prompts["points"]).to(device)
        labels = torch.from_numpy(prompts["labels"].astype("int64"))
        return {
            "input_points": points[None],
            "input_labels": labels[None].to(device),
        }

    def run(input_points=None, input_labels=None, input_boxes=None):
        with torch.no_grad():
            out = model(
                image_embeddings=emb,
                input_points=input_points,
                input_labels=input_labels,
                input_boxes=input_boxes,
                multimask_output=True,
            )
        return out.pred_masks, out.iou_scores

    def outputs(result):
        masks, iou = (r.detach().cpu().numpy() for r in result)
        # (image batch 1, B, 3, ...) -> (B, 3, ...)
        return masks.reshape(-1, *masks.shape[2:]), iou.reshape(-1, 3)

    mode = "eager"
    if compile:
        compiled = torch.compile(run)
        try:
            for inputs in cases:
                compiled(**prepare(inputs))
        except Exception as e:  # any compile failure: fall back to eager
            print(
                f"note: HF SamModel under torch.compile failed ({e!r:.200}); "
                "timing it eager",
                file=sys.stderr,
            )
        else:
            run, mode = compiled, "compiled"
    version = transformers.__version__
    name = f"HF transformers {version} SamModel, {mode}, {attn.upper()}"
    return Reference(name, prepare, run, outputs)


# --------------------------------------------------------------------------
# Official ONNX export in onnxruntime


def _low_res_onnx_model_class():
    import torch
    from segment_anything.utils.onnx import SamOnnxModel

    class LowResSamOnnxModel(SamOnnxModel):
        """The official `SamOnnxModel` forward (point embedding as traced by
        the export, dense no-mask embedding from `mask_input` /
        `has_mask_input`, `mask_decoder.predict_masks`) minus the final
        upsampling to `orig_im_size`: `mask_postprocessing` is the identity,
        so the graph returns the 4 low-resolution logits `(B, 4, 256, 256)`
        that `SamOnnxModel` also returns as its third output, and
        `orig_im_size` is no input. With `return_single_mask=False` and
        `use_stability_score=False`, scores are the IoU predictions."""

        def mask_postprocessing(self, masks, orig_im_size):
            return masks

        def forward(
            self,
            image_embeddings,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
        ):
            _, scores, low_res_masks = super().forward(
                image_embeddings,
                point_coords,
                point_labels,
                mask_input,
                has_mask_input,
                orig_im_size=None,
            )
            return scores, low_res_masks

    class NoImageEncoder(torch.nn.Module):
        """Stands for `Sam.image_encoder`: `SamOnnxModel` reads only its
        `img_size`; image embeddings are inputs."""

        def __init__(self, img_size):
            super().__init__()
            self.img_size = img_size

        def forward(self, x):
            raise RuntimeError("the image encoder is not part of the export")

    return LowResSamOnnxModel, NoImageEncoder


def onnx_reference(
    ref_encoder,
    ref_decoder,
    embedding_nchw: np.ndarray,
    threads: int,
    device: str,
) -> Reference:
    """Official `SamOnnxModel` (low-res output) exported with the legacy
    exporter (`dynamo=False`, opset 17, constant folding, as the official
    script) with dynamic prompt-batch and point axes, run in onnxruntime
    with `intra_op_num_threads=threads`."""
    import copy

    import onnxruntime as ort
    import torch

    from support.reference import official  # stubs torchvision first

    low_res_cls, no_image_encoder = _low_res_onnx_model_class()
    providers = ["CPUExecutionProvider"]
    if device == "gpu":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("onnxruntime has no CUDAExecutionProvider")
        providers = ["CUDAExecutionProvider"]

    sam = official.Sam(
        no_image_encoder(ref_encoder.input_image_size[0]),
        copy.deepcopy(ref_encoder).cpu(),
        copy.deepcopy(ref_decoder).cpu(),
    ).eval()
    model = low_res_cls(
        sam, return_single_mask=False, use_stability_score=False
    ).eval()
    emb = np.ascontiguousarray(embedding_nchw, dtype="float32")
    mask_size = [4 * s for s in ref_encoder.image_embedding_size]
    # Batch 2, 3 points: no size-1 axis for the tracer to specialise on.
    dummy = (
        torch.from_numpy(emb),
        torch.tensor([[[10.0, 20.0], [500.0, 600.0], [0.0, 0.0]]] * 2),
        torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]),
        torch.zeros(1, 1, *mask_size),
        torch.zeros(1),
    )
    input_names = [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
    ]
    output_names = ["iou_predictions", "low_res_masks"]
    dynamic_axes = {
        "point_coords": {0: "batch", 1: "num_points"},
        "point_labels": {0: "batch", 1: "num_points"},
        "iou_predictions": {0: "batch"},
        "low_res_masks": {0: "batch"},
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sam_decoder.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer / deprecation warnings
            torch.onnx.export(
                model,
                dummy,
                path,
                export_params=True,
                opset_version=17,
                do_constant_folding=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                dynamo=False,
            )
        session = ort.InferenceSession(path, options, providers=providers)

    fixed = {
        "image_embeddings": emb,
        "mask_input": np.zeros((1, 1, *mask_size), "float32"),
        "has_mask_input": np.zeros(1, "float32"),
    }

    def prepare(inputs):
        prompts = split_prompts(inputs)
        if "boxes" in prompts:
            b = prompts["boxes"].shape[0]
            coords = prompts["boxes"].reshape(b, 2, 2)  # corners, labels 2, 3
            labels = np.tile(np.array([[2.0, 3.0]], "float32"), (b, 1))
        else:  # the official padding point, as the official ONNX example
            coords = np.asarray(inputs["points"], "float32")
            labels = np.asarray(inputs["labels"], "float32")
        feed = dict(fixed, point_coords=coords, point_labels=labels)
        return {"feed": {k: np.ascontiguousarray(v) for k, v in feed.items()}}

    def run(feed):
        return session.run(output_names, feed)

    def outputs(result):
        iou, masks = result
        return masks[:, 1:], iou[:, 1:]  # drop the single-mask output

    name = f"official ONNX export, onnxruntime {ort.__version__}"
    return Reference(name, prepare, run, outputs)
