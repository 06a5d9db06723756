"""TinyViT's downsampling between stages (`PatchMerging`)."""

import keras

from keras_sam import checks
from keras_sam.models.conv_batch_norm import apply_sandwich
from keras_sam.models.conv_batch_norm import build_in_sequence
from keras_sam.models.conv_batch_norm import conv_sandwich


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
        self.conv1, self.conv2, self.conv3 = conv_sandwich(
            self.output_dim, self.output_dim, self.strides, self.dtype_policy
        )

    def build(self, inputs_shape):
        build_in_sequence((self.conv1, self.conv2, self.conv3), inputs_shape)

    def call(self, inputs, training=None):
        convs = (self.conv1, self.conv2, self.conv3)
        return apply_sandwich(convs, inputs, training)  # (B, H', W', out)

    def compute_output_shape(self, inputs_shape):
        shape = tuple(inputs_shape)
        for conv in (self.conv1, self.conv2, self.conv3):
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self):
        config = super().get_config()
        config.update({"output_dim": self.output_dim, "strides": self.strides})
        return config
