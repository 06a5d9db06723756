"""Convolution followed by batch normalisation (TinyViT's `Conv2d_BN`)."""

import keras
from keras import ops

from keras_sam import checks


@keras.saving.register_keras_serializable(package="keras_sam")
class Conv2DBatchNorm(keras.layers.Layer):
    """A bias-free convolution, then BatchNorm: TinyViT's `Conv2d_BN`.

    The input is zero-padded by `kernel_size // 2` on every side before a
    "valid" convolution, as PyTorch's `padding=k // 2` does; Keras's "same"
    padding would put the extra row at the bottom only for stride 2 and
    shift the output by one pixel. With `depthwise=True` the convolution is
    depthwise (PyTorch `groups=channels`, one filter per channel) and
    `filters` must equal the input channels. BatchNorm uses PyTorch's
    epsilon 1e-5; at inference it applies the stored moving statistics.

    Args:
        filters: Output channels.
        kernel_size: Side of the square kernel.
        strides: Stride of the convolution.
        depthwise: Whether the convolution is depthwise.

    Call arguments:
        inputs: float `(B, H, W, C)`.

    Returns:
        `(B, H', W', filters)` with `H' = (H + 2 (k // 2) - k) // s + 1`.
    """

    def __init__(
        self,
        *,
        filters: int,
        kernel_size: int = 1,
        strides: int = 1,
        depthwise: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("filters", filters),
            ("kernel_size", kernel_size),
            ("strides", strides),
        ):
            checks.integer(name, value, 1)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.depthwise = bool(depthwise)
        policy = self.dtype_policy
        common = dict(
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding="valid",
            use_bias=False,
            dtype=policy,
            name="conv",
        )
        if self.depthwise:
            self.conv = keras.layers.DepthwiseConv2D(**common)
        else:
            self.conv = keras.layers.Conv2D(self.filters, **common)
        self.bn = keras.layers.BatchNormalization(
            epsilon=1e-5, momentum=0.9, dtype=policy, name="bn"
        )

    def _padded(self, shape) -> tuple:
        pad = 2 * (self.kernel_size // 2)
        h, w = shape[1], shape[2]
        return (
            shape[0],
            None if h is None else h + pad,
            None if w is None else w + pad,
            shape[3],
        )

    def build(self, inputs_shape):
        if self.depthwise and inputs_shape[-1] != self.filters:
            raise ValueError(
                "A depthwise `Conv2DBatchNorm` needs `filters` equal to the "
                f"input channels. Received: filters={self.filters}, input "
                f"shape {tuple(inputs_shape)}"
            )
        padded = self._padded(tuple(inputs_shape))
        self.conv.build(padded)
        self.bn.build(self.conv.compute_output_shape(padded))

    def call(self, inputs, training=None):
        pad = self.kernel_size // 2
        x = inputs
        if pad:
            x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        return self.bn(self.conv(x), training=training)

    def compute_output_shape(self, inputs_shape):
        return self.conv.compute_output_shape(self._padded(tuple(inputs_shape)))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "depthwise": self.depthwise,
            }
        )
        return config


def conv_sandwich(
    inner: int, output: int, strides: int, policy
) -> list[Conv2DBatchNorm]:
    """1x1 to `inner`, 3x3 depthwise with `strides`, 1x1 to `output`:
    the three `Conv2DBatchNorm`s (`conv1`, `conv2`, `conv3`) of `MBConv`
    and `PatchMerging`."""
    return [
        Conv2DBatchNorm(filters=inner, dtype=policy, name="conv1"),
        Conv2DBatchNorm(
            filters=inner,
            kernel_size=3,
            strides=strides,
            depthwise=True,
            dtype=policy,
            name="conv2",
        ),
        Conv2DBatchNorm(filters=output, dtype=policy, name="conv3"),
    ]


def build_in_sequence(layers, inputs_shape) -> tuple:
    """Build `layers` one after the other from `inputs_shape`; returns the
    last output shape."""
    shape = tuple(inputs_shape)
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


def apply_sandwich(convs, x, training=None):
    """`conv_sandwich` layers with exact GELU after the first two."""
    first, second, third = convs
    x = ops.gelu(first(x, training=training), approximate=False)
    x = ops.gelu(second(x, training=training), approximate=False)
    return third(x, training=training)
