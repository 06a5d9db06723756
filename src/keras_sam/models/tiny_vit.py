"""MobileSAM's image encoder: TinyViT with SAM's neck."""

from collections.abc import Sequence

import keras
from keras import ops

from keras_sam import checks
from keras_sam.models.conv_batch_norm import Conv2DBatchNorm
from keras_sam.models.conv_batch_norm import build_in_sequence
from keras_sam.models.image_encoder import build_neck
from keras_sam.models.image_encoder import check_images_shape
from keras_sam.models.mbconv import MBConv
from keras_sam.models.patch_merging import PatchMerging
from keras_sam.models.tiny_vit_block import TinyViTBlock


def _ints(name: str, value, length: int | None, low: int) -> tuple:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if not out or (length is not None and len(out) != length) or min(out) < low:
        size = "" if length is None else f"{length} "
        raise ValueError(
            f"`{name}` must be a sequence of {size}integers >= {low}. "
            f"Received: {name}={value}"
        )
    return out


@keras.saving.register_keras_serializable(package="keras_sam")
class TinyViTImageEncoder(keras.layers.Layer):
    """MobileSAM's image encoder: a TinyViT distilled from SAM's ViT-H.

    A patch embedding of two 3x3 stride-2 convolutions (each with
    BatchNorm, GELU between) gives a `(H/4, W/4)` grid of
    `hidden_sizes[0]` channels. Stage 0 is `num_layers[0]` `MBConv`
    blocks; every later stage `i` is `num_layers[i]` `TinyViTBlock`s
    (window attention in `window_sizes[i - 1]` windows with
    `num_heads[i - 1]` heads, depthwise conv, MLP of
    `mlp_ratio * hidden_sizes[i]`). Between stages a `PatchMerging`
    widens to the next stage's width with stride `downsample_strides[i]`.
    SAM's neck (`build_neck`) maps the last stage to `num_output_channels`.
    MobileSAM (`TinyViT-5M`): widths 64, 128, 160, 320, depths 2, 2, 6, 2,
    strides 2, 2, 1, so a 1024-pixel image ends on SAM's 64 x 64 grid.

    Args:
        hidden_sizes: Width of each stage (`S >= 2` stages).
        num_layers: Blocks of each stage (`S`).
        num_heads: Attention heads of stages 1..S-1 (`S - 1`).
        window_sizes: Attention window sides of stages 1..S-1 (`S - 1`).
        downsample_strides: Stride of each merging (`S - 1`, 1 or 2).
        image_shape: `(H, W, 3)` of the padded model input; H and W must be
            multiples of `4 * prod(downsample_strides)`.
        mlp_ratio: MLP width relative to the stage width.
        mbconv_expansion_ratio: Inner width of the `MBConv`s relative to
            `hidden_sizes[0]`.
        local_conv_size: Kernel side of the blocks' depthwise convolution.
        num_output_channels: Channels of the output embedding.

    Call arguments:
        images: float `(B, H, W, 3)` with `(H, W, 3) == image_shape`,
            normalised with SAM's pixel mean and std and padded bottom/right
            (MobileSAM's pre-processing is SAM's).

    Returns:
        `(B, He, We, num_output_channels)` image embeddings, `He = H / (4
        prod(downsample_strides))`.

    Raises:
        ValueError: bad constructor values; `images` of the wrong shape.

    Example:
    >>> encoder = keras_sam.models.TinyViTImageEncoder(
    ...     hidden_sizes=(8, 16), num_layers=(1, 1), num_heads=(2,),
    ...     window_sizes=(4,), downsample_strides=(2,),
    ...     image_shape=(64, 64, 3), num_output_channels=16)
    >>> tuple(encoder(np.zeros((1, 64, 64, 3))).shape)
    (1, 8, 8, 16)

    Reference:
        Wu et al., "TinyViT: Fast Pretraining Distillation for Small Vision
        Transformers", ECCV 2022; Zhang et al., "Faster Segment Anything:
        Towards Lightweight SAM for Mobile Applications" (MobileSAM), 2023.
    """

    def __init__(
        self,
        *,
        hidden_sizes: Sequence[int] = (64, 128, 160, 320),
        num_layers: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (4, 5, 10),
        window_sizes: Sequence[int] = (7, 14, 7),
        downsample_strides: Sequence[int] = (2, 2, 1),
        image_shape: tuple[int, int, int] = (1024, 1024, 3),
        mlp_ratio: float = 4.0,
        mbconv_expansion_ratio: float = 4.0,
        local_conv_size: int = 3,
        num_output_channels: int = 256,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_sizes = _ints("hidden_sizes", hidden_sizes, None, 1)
        stages = len(self.hidden_sizes)
        if stages < 2:
            raise ValueError(
                "`hidden_sizes` must name at least two stages. "
                f"Received: hidden_sizes={hidden_sizes}"
            )
        self.num_layers = _ints("num_layers", num_layers, stages, 1)
        self.num_heads = _ints("num_heads", num_heads, stages - 1, 1)
        self.window_sizes = _ints("window_sizes", window_sizes, stages - 1, 1)
        self.downsample_strides = _ints(
            "downsample_strides", downsample_strides, stages - 1, 1
        )
        for i, (c, h) in enumerate(
            zip(self.hidden_sizes[1:], self.num_heads, strict=True)
        ):
            if c % h:
                raise ValueError(
                    "`num_heads` must divide the stage widths. Received: "
                    f"num_heads[{i}]={h}, hidden_sizes[{i + 1}]={c}"
                )
        for name, value in (
            ("mlp_ratio", mlp_ratio),
            ("mbconv_expansion_ratio", mbconv_expansion_ratio),
        ):
            if not float(value) > 0:
                raise ValueError(
                    f"`{name}` must be positive. Received: {name}={value}"
                )
        checks.integer("local_conv_size", local_conv_size, 1)
        checks.integer("num_output_channels", num_output_channels, 1)
        self.mlp_ratio = float(mlp_ratio)
        self.mbconv_expansion_ratio = float(mbconv_expansion_ratio)
        self.local_conv_size = int(local_conv_size)
        self.num_output_channels = int(num_output_channels)
        self.stride = 4
        for s in self.downsample_strides:
            self.stride *= s
        self.image_shape = _ints("image_shape", image_shape, 3, 1)
        if self.image_shape[0] % self.stride or self.image_shape[1] % (
            self.stride
        ):
            raise ValueError(
                "`image_shape` height and width must be multiples of "
                f"4 * prod(downsample_strides) = {self.stride}. Received: "
                f"image_shape={image_shape}"
            )
        self.grid_size = (
            self.image_shape[0] // self.stride,
            self.image_shape[1] // self.stride,
        )

        policy = self.dtype_policy
        first = self.hidden_sizes[0]
        self.patch_embed = [
            Conv2DBatchNorm(
                filters=first // 2,
                kernel_size=3,
                strides=2,
                dtype=policy,
                name="patch_embed_0",
            ),
            Conv2DBatchNorm(
                filters=first,
                kernel_size=3,
                strides=2,
                dtype=policy,
                name="patch_embed_1",
            ),
        ]
        self.stages = []
        self.downsamples = []
        for i, width in enumerate(self.hidden_sizes):
            if i == 0:
                blocks = [
                    MBConv(
                        hidden_size=width,
                        expansion_ratio=self.mbconv_expansion_ratio,
                        dtype=policy,
                        name=f"stage_0_block_{j}",
                    )
                    for j in range(self.num_layers[0])
                ]
            else:
                blocks = [
                    TinyViTBlock(
                        hidden_size=width,
                        num_heads=self.num_heads[i - 1],
                        window_size=self.window_sizes[i - 1],
                        intermediate_dim=int(width * self.mlp_ratio),
                        local_conv_size=self.local_conv_size,
                        dtype=policy,
                        name=f"stage_{i}_block_{j}",
                    )
                    for j in range(self.num_layers[i])
                ]
            self.stages.append(blocks)
            if i + 1 < stages:
                self.downsamples.append(
                    PatchMerging(
                        output_dim=self.hidden_sizes[i + 1],
                        strides=self.downsample_strides[i],
                        dtype=policy,
                        name=f"stage_{i}_downsample",
                    )
                )
        self.neck = build_neck(self.num_output_channels, policy)

    def _in_order(self):
        """Every layer in call order."""
        yield from self.patch_embed
        for i, blocks in enumerate(self.stages):
            yield from blocks
            if i < len(self.downsamples):
                yield self.downsamples[i]

    def build(self, images_shape=None):
        shape = build_in_sequence(self._in_order(), (None,) + self.image_shape)
        self.neck.build(shape)

    def call(self, images, training=None):
        check_images_shape(checks.static_shape(images), self.image_shape)
        x = ops.cast(images, self.compute_dtype)
        first, second = self.patch_embed
        x = ops.gelu(first(x, training=training), approximate=False)
        x = second(x, training=training)  # (B, H/4, W/4, C0)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x, training=training)
            if i < len(self.downsamples):
                x = self.downsamples[i](x, training=training)
        return self.neck(x)  # (B, He, We, num_output_channels)

    def compute_output_shape(self, images_shape):
        check_images_shape(tuple(images_shape), self.image_shape)
        return (images_shape[0],) + self.grid_size + (self.num_output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_sizes": self.hidden_sizes,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "window_sizes": self.window_sizes,
                "downsample_strides": self.downsample_strides,
                "image_shape": self.image_shape,
                "mlp_ratio": self.mlp_ratio,
                "mbconv_expansion_ratio": self.mbconv_expansion_ratio,
                "local_conv_size": self.local_conv_size,
                "num_output_channels": self.num_output_channels,
            }
        )
        return config
