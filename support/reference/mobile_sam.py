"""MobileSAM's official PyTorch code (`mobile_sam`) as a test oracle.

The only module that imports `mobile_sam`, and the only place that stubs
its `timm` import: `TinyViT` imports `DropPath`, `to_2tuple` and
`trunc_normal_` from `timm.models.layers` and `register_model` from
`timm.models.registry` at import time (timm would pull torchvision, which
has no CPU build here; `support.reference.official` stubs torchvision).
The stub gives `to_2tuple`, PyTorch's own `trunc_normal_`, a pass-through
`register_model`, and a `DropPath` that refuses to run (MobileSAM's drop
path rate is 0, so none is built).
"""

import sys

import numpy as np
import torch

from support.reference import official  # installs the torchvision stub


def _install_timm_stub() -> None:
    if "timm" in sys.modules:
        return

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            raise RuntimeError("timm DropPath is a test stub")

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    modules = {
        "timm": {},
        "timm.models": {},
        "timm.models.layers": {
            "DropPath": DropPath,
            "to_2tuple": to_2tuple,
            "trunc_normal_": torch.nn.init.trunc_normal_,
        },
        "timm.models.registry": {"register_model": lambda fn: fn},
    }
    official.install_stub_modules(modules)


_install_timm_stub()

from mobile_sam import SamPredictor  # noqa: E402, F401
from mobile_sam.build_sam import build_sam_vit_t  # noqa: E402, F401
from mobile_sam.modeling import MaskDecoder  # noqa: E402
from mobile_sam.modeling import PromptEncoder  # noqa: E402
from mobile_sam.modeling import Sam  # noqa: E402
from mobile_sam.modeling import TinyViT  # noqa: E402
from mobile_sam.modeling import TwoWayTransformer  # noqa: E402
from mobile_sam.modeling import tiny_vit_sam  # noqa: E402

set_image_without_torchvision = official.set_image_without_torchvision

# A small TinyViT the official code runs: its forward pass fixes a 64 x 64
# output grid (1024-pixel input), and only last widths 320, 448, 576 keep
# the last merging at stride 1; everything else is shrunk. Our names.
SMALL = dict(
    hidden_sizes=(16, 32, 40, 320),
    num_layers=(1, 1, 1, 1),
    num_heads=(2, 5, 5),
    window_sizes=(7, 14, 7),
    downsample_strides=(2, 2, 1),
    image_shape=(1024, 1024, 3),
    mlp_ratio=1.0,
    mbconv_expansion_ratio=2.0,
    local_conv_size=3,
    num_output_channels=32,
)


def _neck(channels: int, out: int) -> torch.nn.Sequential:
    norm = tiny_vit_sam.LayerNorm2d
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, out, kernel_size=1, bias=False),
        norm(out),
        torch.nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
        norm(out),
    )


def tiny_vit_module(config: dict) -> torch.nn.Module:
    """Official `TinyViT` with our `config` (stage 0's unused heads and
    window are given the stage 1 values); a neck of
    `num_output_channels` replaces the fixed 256-wide one."""
    module = TinyViT(
        img_size=config["image_shape"][0],
        in_chans=config["image_shape"][2],
        embed_dims=list(config["hidden_sizes"]),
        depths=list(config["num_layers"]),
        num_heads=[config["num_heads"][0], *config["num_heads"]],
        window_sizes=[config["window_sizes"][0], *config["window_sizes"]],
        mlp_ratio=config["mlp_ratio"],
        drop_path_rate=0.0,
        mbconv_expand_ratio=config["mbconv_expansion_ratio"],
        local_conv_size=config["local_conv_size"],
        layer_lr_decay=0.8,
    )
    if config["num_output_channels"] != 256:
        module.neck = _neck(
            config["hidden_sizes"][-1], config["num_output_channels"]
        )
    return module


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Seeded values for every norm, bias, BatchNorm statistic and
    attention bias (the official init leaves them 0 or 1, which would
    leave them untested). Call before `eval()`, which caches the attention
    biases."""
    generator = torch.Generator().manual_seed(seed)

    def noise(tensor, std):
        return torch.randn(tensor.shape, generator=generator) * std

    norms = (
        torch.nn.LayerNorm,
        torch.nn.BatchNorm2d,
        tiny_vit_sam.LayerNorm2d,
        official.LayerNorm2d,
    )
    with torch.no_grad():
        for _, sub in module.named_modules():
            is_norm = isinstance(sub, norms)
            for name, param in sub.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    param.copy_(1.0 + noise(param, 0.1))
                elif name in ("bias", "attention_biases") or is_norm:
                    param.copy_(noise(param, 0.5 if "att" in name else 0.1))
                elif isinstance(sub, torch.nn.Embedding):
                    param.copy_(noise(param, 1.0))
            if isinstance(sub, torch.nn.BatchNorm2d):
                sub.running_mean.copy_(noise(sub.running_mean, 0.1))
                sub.running_var.copy_(1.0 + noise(sub.running_var, 0.1).abs())


def make_tiny_vit(config: dict = SMALL, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = tiny_vit_module(config)
    randomize_(module, seed)
    return module.eval()


def make_mobile_sam(
    config: dict = SMALL,
    decoder_mlp_dim: int = 64,
    decoder_heads: int = 2,
    seed: int = 0,
):
    """A seeded official MobileSAM `Sam` (SAM's prompt encoder and decoder
    at the encoder's output width)."""
    torch.manual_seed(seed)
    width = config["num_output_channels"]
    side = config["image_shape"][0]
    stride = 4 * int(np.prod(config["downsample_strides"]))
    model = Sam(
        image_encoder=tiny_vit_module(config),
        prompt_encoder=PromptEncoder(
            embed_dim=width,
            image_embedding_size=(side // stride, side // stride),
            input_image_size=(side, side),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=width,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_heads,
            ),
            transformer_dim=width,
            iou_head_depth=3,
            iou_head_hidden_dim=width,
        ),
    )
    randomize_(model, seed)
    return model.eval()


def state_dict(module: torch.nn.Module) -> dict:
    """`module.state_dict()` without the BatchNorm step counters, as
    `keras_sam.convert.checkpoint.read_state_dict` reads a saved file."""
    return {
        k: v
        for k, v in module.state_dict().items()
        if not k.endswith(".num_batches_tracked")
    }
