"""transformers' `SamModel` as an oracle: a tiny seeded model and its
outputs on given prompts (NCHW in, channels-last out)."""

import sys

import numpy as np
import torch


def _transformers_sam():
    """transformers' SAM classes, imported with `official`'s torchvision
    stub (if installed) out of sight: transformers would take the stub for
    torchvision and import what it lacks.

    Imported on first use, not with this module: transformers takes
    seconds to import, which every pytest worker would pay while collecting
    the tests, on every backend.
    """
    stub = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == "torchvision" or name.startswith("torchvision.")
    }
    try:
        import transformers

        return transformers
    finally:
        sys.modules.update(stub)


IMAGE_SIZE = 64


def make_sam_model(seed: int = 0):
    """A tiny `SamModel` (64-pixel images, 8x8 embedding grid) with every
    tensor seeded random; its decoder's `layer_norm_eps` is the official
    1e-5 (transformers defaults to 1e-6)."""
    transformers = _transformers_sam()
    vision = transformers.SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        image_size=IMAGE_SIZE,
        patch_size=8,
        output_channels=16,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=8,
    )
    prompt = transformers.SamPromptEncoderConfig(
        hidden_size=16,
        image_size=IMAGE_SIZE,
        patch_size=8,
        mask_input_channels=4,
    )
    decoder = transformers.SamMaskDecoderConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=32,
        iou_head_hidden_dim=16,
        layer_norm_eps=1e-5,
    )
    config = transformers.SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )
    model = transformers.SamModel(config).eval()
    # transformers initialises the encoder near zero (initializer_range
    # 1e-10), which would leave it untested: seeded values everywhere.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            if "layer_norm" in name and name.endswith("weight"):
                tensor.copy_(1.0 + 0.1 * noise)
            else:
                tensor.copy_(noise * (0.2 if tensor.ndim > 1 else 0.05))
    return model


def run(
    model,
    images: np.ndarray,
    points=None,
    labels=None,
    boxes=None,
    multimask_output: bool = True,
) -> dict:
    """`SamModel` on one image and one prompt.

    Args:
        model: a `transformers.SamModel`.
        images: `(1, 3, H, W)` normalised pixels.
        points: `(N, 2)` xy in the input frame, or None.
        labels: `(N,)`, or None.
        boxes: `(4,)` xyxy, or None.

    Returns:
        `"image_embeddings"` `(1, He, We, C)`, `"masks"` `(1, n, 4He, 4We)`
        low-res logits and `"iou_pred"` `(1, n)`, n = 3 or 1.
    """
    kwargs = {}
    if points is not None:
        kwargs["input_points"] = torch.tensor(
            points[None, None], dtype=torch.float32
        )
        kwargs["input_labels"] = torch.tensor(
            labels[None, None], dtype=torch.int64
        )
    if boxes is not None:
        kwargs["input_boxes"] = torch.tensor(
            boxes[None, None], dtype=torch.float32
        )
    with torch.no_grad():
        embeddings = model.get_image_embeddings(torch.from_numpy(images))
        out = model(
            image_embeddings=embeddings,
            multimask_output=multimask_output,
            **kwargs,
        )
    return {
        "image_embeddings": embeddings.numpy().transpose(0, 2, 3, 1),
        "masks": out.pred_masks.numpy()[:, 0],
        "iou_pred": out.iou_scores.numpy()[:, 0],
    }
