"""Positional encoding with random spatial frequencies (SAM, Tancik et al.)."""

import math

import keras
from keras import ops

from keras_sam import checks


@keras.saving.register_keras_serializable(package="keras_sam")
class RandomFrequencyPositionalEmbeddings(keras.layers.Layer):
    """Positional encoding of 2D coordinates with random Fourier features.

    A coordinate `p` normalised to `[0, 1]^2` is mapped to `2p - 1`, multiplied
    by a fixed Gaussian matrix `G` of shape `(2, F)` and by `2 pi`, and encoded
    as `[sin(.), cos(.)]`, giving `2F` features. `G` is a buffer: it is
    created non-trainable and loaded from a checkpoint. The encoding is always
    computed in float32 (the phase `2 pi p G` loses several digits in bfloat16)
    and cast to the compute dtype at the end.

    Args:
        num_positional_features: Number of random frequencies `F`; the output
            has `2F` features.
        scale: Standard deviation of the initial Gaussian matrix. Values
            `<= 0` mean 1.0, as in the official code.

    Example:
    >>> layer = RandomFrequencyPositionalEmbeddings(num_positional_features=4)
    >>> tuple(layer.encode_image((8, 6)).shape)
    (8, 6, 8)
    """

    def __init__(
        self, *, num_positional_features: int, scale: float = 1.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.num_positional_features = checks.integer(
            "num_positional_features", num_positional_features
        )
        self.scale = float(scale)

    def build(self, input_shape=None):
        scale = self.scale if self.scale > 0 else 1.0
        self.positional_encoding_gaussian_matrix = self.add_weight(
            name="positional_encoding_gaussian_matrix",
            shape=(2, self.num_positional_features),
            initializer=keras.initializers.RandomNormal(stddev=scale),
            trainable=False,
            # A buffer of coordinates-to-phase factors: full precision always.
            dtype="float32",
        )

    def _encode(self, coords):
        # coords: (..., 2) in [0, 1], float32.
        coords = 2.0 * coords - 1.0
        gaussian = ops.cast(self.positional_encoding_gaussian_matrix, "float32")
        coords = ops.matmul(coords, gaussian) * (2.0 * math.pi)  # (..., F)
        encoded = ops.concatenate([ops.sin(coords), ops.cos(coords)], axis=-1)
        return ops.cast(encoded, self.compute_dtype)

    def encode_coordinates(self, coords, image_size: tuple[int, int]):
        """Encode pixel coordinates given in an image of `image_size`.

        Args:
            coords: float `(..., 2)`, `(x, y)` in pixels of the frame
                `image_size`; callers add the 0.5 pixel-centre shift.
            image_size: `(height, width)` of that frame: x is divided by the
                width and y by the height.

        Returns:
            `(..., 2F)` encodings in the compute dtype.
        """
        coords = ops.cast(coords, "float32")
        # Divide (not multiply by a reciprocal) to round as the official code.
        size_xy = ops.convert_to_tensor(
            [float(image_size[1]), float(image_size[0])], dtype="float32"
        )
        return self._encode(coords / size_xy)

    def encode_image(self, size: tuple[int, int]):
        """Encode the centres of an `(H, W)` grid of cells.

        Returns:
            `(H, W, 2F)`: cell `(i, j)` encodes the point
            `((j + 0.5) / W, (i + 0.5) / H)`.
        """
        height, width = int(size[0]), int(size[1])
        ys = (ops.arange(height, dtype="float32") + 0.5) / height
        xs = (ops.arange(width, dtype="float32") + 0.5) / width
        grid = ops.stack(
            [
                ops.broadcast_to(xs[None, :], (height, width)),
                ops.broadcast_to(ys[:, None], (height, width)),
            ],
            axis=-1,
        )  # (H, W, 2) as (x, y)
        return self._encode(grid)

    def call(self, size):
        return self.encode_image(size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_positional_features": self.num_positional_features,
                "scale": self.scale,
            }
        )
        return config
