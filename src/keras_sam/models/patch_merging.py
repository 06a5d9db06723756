"""TinyViT's downsampling between stages (`PatchMerging`)."""

import keras
from keras import ops

from keras_sam import checks
from keras_sam.models.conv_batch_norm import Conv2DBatchNorm


@keras.saving.register_keras_serializable(package="keras_sam")
class PatchMerging(keras.layers.Layer):
    """Downsampling between TinyViT stages.

    1x1 convolution to `output_dim` channels, GELU, 3x3 depthwise
    convolution with stride `strides`, GELU, 1x1 convolution, each followed
    by BatchNorm (`Conv2DBatchNorm`); no residual. MobileSAM keeps the
    last merging at stride 1 so that a 1024-pixel image ends on SAM's
    64 x 64 grid (its code picks stride 1 for output widths 320, 448 and
    576; here the stride is an argument).

    Args:
        output_dim: Output channels.
        strides: Stride of the depthwise convolution (1 or 2).

    Call arguments:
        inputs: float `(B, H, W, C)`.

    Returns:
        `(B, H', W', output_dim)`, `H' = (H - 1) // strides + 1`.
    """

    def __init__(self, *, output_dim: int, strides: int = 2, **kwargs):
        super().__init__(**kwargs)
        checks.integer("output_dim", output_dim, 1)
        checks.integer("strides", strides, 1)
        self.output_dim = int(output_dim)
        self.strides = int(strides)
        policy = self.dtype_policy
        self.conv1 = Conv2DBatchNorm(
            filters=self.output_dim, dtype=policy, name="conv1"
        )
        self.conv2 = Conv2DBatchNorm(
            filters=self.output_dim,
            kernel_size=3,
            strides=self.strides,
            depthwise=True,
            dtype=policy,
            name="conv2",
        )
        self.conv3 = Conv2DBatchNorm(
            filters=self.output_dim, dtype=policy, name="conv3"
        )

    def build(self, inputs_shape):
        shape = tuple(inputs_shape)
        for conv in (self.conv1, self.conv2, self.conv3):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)

    def call(self, inputs, training=None):
        x = ops.gelu(self.conv1(inputs, training=training), approximate=False)
        x = ops.gelu(self.conv2(x, training=training), approximate=False)
        return self.conv3(x, training=training)  # (B, H', W', output_dim)

    def compute_output_shape(self, inputs_shape):
        shape = tuple(inputs_shape)
        for conv in (self.conv1, self.conv2, self.conv3):
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self):
        config = super().get_config()
        config.update({"output_dim": self.output_dim, "strides": self.strides})
        return config
