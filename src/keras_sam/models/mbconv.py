"""TinyViT's convolutional block (`MBConv`, MobileNetV2's inverted
residual)."""

import keras
from keras import ops

from keras_sam import checks
from keras_sam.models.conv_batch_norm import apply_sandwich
from keras_sam.models.conv_batch_norm import build_in_sequence
from keras_sam.models.conv_batch_norm import conv_sandwich


@keras.saving.register_keras_serializable(package="keras_sam")
class MBConv(keras.layers.Layer):
    """Inverted residual block of TinyViT's first (convolutional) stage.

    1x1 expansion to `int(C * expansion_ratio)` channels, GELU, 3x3
    depthwise convolution, GELU, 1x1 projection back to `C`, each
    convolution followed by BatchNorm (`Conv2DBatchNorm`); the input is
    added and a last GELU applied (after the sum, as the official code).
    GELU is the exact (erf) one.

    Args:
        hidden_size: Channels `C` of input and output.
        expansion_ratio: Width of the inner convolutions relative to `C`.

    Call arguments:
        inputs: float `(B, H, W, C)`.

    Returns:
        `(B, H, W, C)`.
    """

    def __init__(
        self, *, hidden_size: int, expansion_ratio: float = 4.0, **kwargs
    ):
        super().__init__(**kwargs)
        checks.integer("hidden_size", hidden_size, 1)
        if not float(expansion_ratio) > 0:
            raise ValueError(
                "`expansion_ratio` must be positive. "
                f"Received: expansion_ratio={expansion_ratio}"
            )
        self.hidden_size = int(hidden_size)
        self.expansion_ratio = float(expansion_ratio)
        inner = int(self.hidden_size * self.expansion_ratio)
        self.conv1, self.conv2, self.conv3 = conv_sandwich(
            inner, self.hidden_size, 1, self.dtype_policy
        )

    def build(self, inputs_shape):
        build_in_sequence((self.conv1, self.conv2, self.conv3), inputs_shape)

    def call(self, inputs, training=None):
        x = apply_sandwich(
            (self.conv1, self.conv2, self.conv3), inputs, training
        )
        return ops.gelu(x + inputs, approximate=False)  # (B, H, W, C)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "expansion_ratio": self.expansion_ratio,
            }
        )
        return config
