"""The official ONNX export of SAM's decoder, as its script makes it.

`segment_anything/scripts/export_onnx_model.py`: `SamOnnxModel` (prompt
encoder + mask decoder + the crop and resize to `orig_im_size`),
`torch.onnx.export` with TorchScript tracing, opset 17, constant folding,
the point axis dynamic. Its crop is traced as a constant from the dummy
`orig_im_size`, which is why the export is right at that size only.
"""

import importlib
import os
import warnings

import torch

from support.reference import official  # noqa: F401 (stubs torchvision)

OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


def export_official_decoder(
    ref, path, orig_im_size, *, dynamic_batch: bool = False
) -> str:
    """Write the official export of `ref` (an official `Sam`) to `path`.

    Args:
        ref: the official model.
        path: the `.onnx` file to write.
        orig_im_size: `(H, W)` of the dummy picture (the official script
            uses 1500x2250).
        dynamic_batch: also make the prompt batch (first axis of the
            points and labels) dynamic, which the official script does not;
            the dummy batch is then 2, so that the tracer does not
            specialise on a size-1 axis.

    Returns:
        `path`, as a string.
    """
    # The official export's own module, imported once `official` has
    # stubbed torchvision.
    onnx_module = importlib.import_module("segment_anything.utils.onnx")
    onnx_model = onnx_module.SamOnnxModel(ref, return_single_mask=False)
    onnx_model.eval()
    c = ref.prompt_encoder.embed_dim
    he, we = ref.prompt_encoder.image_embedding_size
    side = ref.image_encoder.img_size
    batch = 2 if dynamic_batch else 1
    dummy = {
        "image_embeddings": torch.randn(1, c, he, we),
        "point_coords": torch.randint(0, side, (batch, 5, 2)).float(),
        "point_labels": torch.randint(0, 4, (batch, 5)).float(),
        "mask_input": torch.randn(1, 1, 4 * he, 4 * we),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor(orig_im_size, dtype=torch.float),
    }
    prompt_axes = {0: "B", 1: "N"} if dynamic_batch else {1: "N"}
    axes = {"point_coords": prompt_axes, "point_labels": dict(prompt_axes)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings
        torch.onnx.export(
            onnx_model,
            tuple(dummy.values()),
            os.fspath(path),
            export_params=True,
            opset_version=17,
            do_constant_folding=True,
            input_names=list(dummy),
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            dynamo=False,
        )
    return os.fspath(path)
