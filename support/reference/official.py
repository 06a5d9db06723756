"""The official PyTorch SAM as a test oracle.

This is the only module that imports `segment_anything`, and the only place
that stubs `torchvision` (there is no CPU build of it here). The stub provides
just the names `segment_anything` imports: the two box operations of the
automatic mask generator as small PyTorch implementations of torchvision's
semantics (below), and the image resize functions raising if called (the
predictor's resize is reproduced by `set_image_without_torchvision`).
"""

import functools
import inspect
import sys
import types

import numpy as np
import torch

from keras_sam.models.image_encoder import SAMImageEncoder


def box_area(boxes):
    """torchvision `box_area`: `(x2 - x1) * (y2 - y1)` of xyxy boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision `batched_nms`: greedy NMS per category (offset trick),
    by descending score with a stable sort, IoU > threshold suppressed
    (float32 IoU compared in float64, as its C++ kernel)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    boxes = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
    order = torch.sort(scores, descending=True, stable=True).indices
    areas = box_area(boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        lo = torch.maximum(boxes[i, :2], boxes[:, :2])
        hi = torch.minimum(boxes[i, 2:], boxes[:, 2:])
        wh = (hi - lo).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou.double() > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _install_torchvision_stub() -> None:
    if "torchvision" in sys.modules:
        return

    def unavailable(name):
        def fn(*args, **kwargs):
            raise RuntimeError(
                f"torchvision.{name} is a test stub: no CPU torchvision here"
            )

        return fn

    modules = {
        "torchvision": {},
        "torchvision.transforms": {},
        "torchvision.transforms.functional": {
            "resize": unavailable("transforms.functional.resize"),
            "to_pil_image": unavailable("transforms.functional.to_pil_image"),
        },
        "torchvision.ops": {},
        # The official generator's NMS: test-side PyTorch implementations
        # of torchvision's semantics (no CPU torchvision here).
        "torchvision.ops.boxes": {
            "batched_nms": batched_nms,
            "box_area": box_area,
        },
    }
    install_stub_modules(modules)


def install_stub_modules(modules: dict) -> None:
    """Register `{dotted name: attributes}` as modules in `sys.modules`,
    each set as an attribute of its parent (parents listed first)."""
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    for name in modules:
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])


_install_torchvision_stub()

from segment_anything import SamPredictor  # noqa: E402, F401
from segment_anything import modeling  # noqa: E402, F401
from segment_anything.build_sam import sam_model_registry  # noqa: E402, F401
from segment_anything.modeling import ImageEncoderViT  # noqa: E402
from segment_anything.modeling import MaskDecoder  # noqa: E402
from segment_anything.modeling import PromptEncoder  # noqa: E402
from segment_anything.modeling import Sam  # noqa: E402
from segment_anything.modeling import TwoWayTransformer  # noqa: E402
from segment_anything.modeling import prompt_encoder as _pe  # noqa: E402
from segment_anything.modeling.common import LayerNorm2d  # noqa: E402

PositionEmbeddingRandom = _pe.PositionEmbeddingRandom

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Give every bias, norm and embedding seeded random values.

    Official modules start with zero biases and unit norms, which would leave
    those weights untested by a parity test. Weight matrices keep PyTorch's
    default (seeded) initialisation, so activations keep realistic scales.
    """
    generator = torch.Generator().manual_seed(seed)

    def noise(tensor, std):
        return torch.randn(tensor.shape, generator=generator) * std

    with torch.no_grad():
        for _, sub in module.named_modules():
            is_norm = isinstance(sub, (torch.nn.LayerNorm, LayerNorm2d))
            for name, param in sub.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    param.copy_(1.0 + noise(param, 0.1))
                elif name == "bias" or is_norm:
                    param.copy_(noise(param, 0.1))
                elif isinstance(sub, torch.nn.Embedding):
                    param.copy_(noise(param, 1.0))


def make_prompt_encoder(
    *,
    embed_dim: int = 256,
    image_embedding_size=(64, 64),
    input_image_size=(1024, 1024),
    mask_in_chans: int = 16,
    seed: int = 0,
) -> PromptEncoder:
    torch.manual_seed(seed)
    module = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=tuple(image_embedding_size),
        input_image_size=tuple(input_image_size),
        mask_in_chans=mask_in_chans,
    )
    randomize_(module, seed)  # the Gaussian buffer is seeded by manual_seed
    return module.eval()


def make_mask_decoder(
    *,
    transformer_dim: int = 256,
    depth: int = 2,
    mlp_dim: int = 2048,
    num_heads: int = 8,
    num_multimask_outputs: int = 3,
    iou_head_depth: int = 3,
    iou_head_hidden_dim: int = 256,
    seed: int = 0,
) -> MaskDecoder:
    torch.manual_seed(seed)
    module = MaskDecoder(
        transformer_dim=transformer_dim,
        transformer=TwoWayTransformer(
            depth=depth,
            embedding_dim=transformer_dim,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
        ),
        num_multimask_outputs=num_multimask_outputs,
        iou_head_depth=iou_head_depth,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    randomize_(module, seed)
    return module.eval()


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy()


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 3, 1, 2))


def image_encoder_module(config: dict):
    """Official `ImageEncoderViT` with the same configuration, unseeded.

    The official class takes one square `img_size`; for a non-square image
    the grid-sized tables (`pos_embed`, the global blocks' `rel_pos_w`) are
    replaced by ones of the right width, which its forward pass accepts.
    """
    defaults = {
        name: param.default
        for name, param in inspect.signature(
            SAMImageEncoder.__init__
        ).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    config = {**defaults, **config}
    height, width, channels = config["image_shape"]
    p, c = config["patch_size"], config["hidden_size"]
    globals_ = tuple(config["global_attention_layer_indices"])
    module = ImageEncoderViT(
        img_size=height,
        patch_size=p,
        in_chans=channels,
        embed_dim=c,
        depth=config["num_layers"],
        num_heads=config["num_heads"],
        mlp_ratio=config["intermediate_dim"] / c,
        out_chans=config["num_output_channels"],
        qkv_bias=config["use_bias"],
        norm_layer=functools.partial(
            torch.nn.LayerNorm, eps=config["layer_norm_epsilon"]
        ),
        use_abs_pos=config["use_abs_pos"],
        use_rel_pos=config["use_rel_pos"],
        window_size=config["window_size"],
        global_attn_indexes=globals_,
    )
    if width != height:
        grid_w = width // p
        if config["use_abs_pos"]:
            module.pos_embed = torch.nn.Parameter(
                torch.zeros(1, height // p, grid_w, c)
            )
        for i, block in enumerate(module.blocks):
            is_global = i in globals_ or config["window_size"] == 0
            if config["use_rel_pos"] and is_global:
                block.attn.rel_pos_w = torch.nn.Parameter(
                    torch.zeros(2 * grid_w - 1, c // config["num_heads"])
                )
    return module


def make_image_encoder(config: dict, seed: int = 0):
    """Seeded official encoder; every parameter is random, none zero."""
    torch.manual_seed(seed)
    module = image_encoder_module(config)
    randomize_(module, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in module.named_parameters():
            # Zero-initialised by the official code: give them values.
            if name == "pos_embed" or ".rel_pos_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) / 2)
    return module.eval()


def make_sam(
    image_encoder_config: dict,
    prompt_dim: int,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 64,
    decoder_heads: int = 2,
    seed: int = 0,
):
    """A seeded official `Sam` whose image encoder has our `config` names."""
    image_encoder = make_image_encoder(image_encoder_config, seed)
    h, w = image_encoder_config["image_shape"][:2]
    p = image_encoder_config.get("patch_size", 16)
    prompt_encoder = make_prompt_encoder(
        embed_dim=prompt_dim,
        image_embedding_size=(h // p, w // p),
        input_image_size=(h, w),
        seed=seed + 1,
    )
    mask_decoder = make_mask_decoder(
        transformer_dim=prompt_dim,
        depth=decoder_depth,
        mlp_dim=decoder_mlp_dim,
        num_heads=decoder_heads,
        seed=seed + 2,
    )
    return Sam(image_encoder, prompt_encoder, mask_decoder).eval()


def make_preset_sam(preset: dict, seed: int = 0):
    """A seeded official `Sam` with the architecture of one of our
    `PRESETS` entries."""
    decoder = preset["mask_decoder"]
    return make_sam(
        preset["image_encoder"],
        prompt_dim=preset["prompt_encoder"]["hidden_size"],
        decoder_mlp_dim=decoder["intermediate_dim"],
        decoder_heads=decoder["num_heads"],
        seed=seed,
    )


def set_image_without_torchvision(predictor, image: np.ndarray) -> None:
    """`SamPredictor.set_image` for an RGB uint8 image, minus torchvision.

    The official `ResizeLongestSide.apply_image` is
    `np.array(resize(to_pil_image(image), target_size))`; torchvision's
    `resize` of a PIL image calls `PIL.Image.resize((w, h), BILINEAR)`. This
    does exactly that with PIL, then the official `set_torch_image`.
    """
    from PIL import Image

    target = predictor.transform.get_preprocess_shape(
        image.shape[0], image.shape[1], predictor.transform.target_length
    )
    resized = np.array(
        Image.fromarray(image).resize(
            (target[1], target[0]), Image.Resampling.BILINEAR
        )
    )
    tensor = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
    predictor.set_torch_image(tensor, image.shape[:2])


def make_generator(model, **kwargs):
    """An official `SamAutomaticMaskGenerator` whose predictor resizes
    crops without torchvision."""
    import segment_anything.automatic_mask_generator as amg

    generator = amg.SamAutomaticMaskGenerator(model, **kwargs)
    predictor = generator.predictor
    predictor.set_image = lambda crop: set_image_without_torchvision(
        predictor, crop
    )
    return generator


def structure_weights_(model) -> None:
    """Edit a random official `Sam` in place so that its masks are blobs.

    Random weights give speckled masks that fill the image (a checkerboard
    from the stride-2 transposed convolutions and the random positional
    tables), so every mask box would be the whole image and NMS would keep
    one mask. With the positional tables zeroed, each transposed-convolution
    kernel averaged over its 2x2 taps and the hypernetworks' outputs scaled
    by 100 (logits of order 1), masks have varied boxes and few
    near-threshold pixels. Convert after editing, so both models get the
    same weights.
    """
    decoder = model.mask_decoder
    with torch.no_grad():
        for name, param in model.image_encoder.named_parameters():
            if name == "pos_embed" or ".rel_pos_" in name:
                param.zero_()
        for conv in (decoder.output_upscaling[0], decoder.output_upscaling[3]):
            w = conv.weight
            w.copy_(w.mean(dim=(2, 3), keepdim=True).expand_as(w))
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(100.0)
            mlp.layers[-1].bias.mul_(100.0)
