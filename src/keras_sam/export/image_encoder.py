"""The image encoder as exported: a resized picture in, its embedding out."""

import keras
from keras import ops

from keras_sam.backend.export import normalize_and_pad
from keras_sam.export import interface
from keras_sam.inference.transforms import PIXEL_MEAN
from keras_sam.inference.transforms import PIXEL_STD


class ImageEncoderExport(keras.Model):
    """`SAMImageEncoder` behind the predictor's normalisation and padding.

    The input is the picture already resized so that its long side is the
    model's input size (PIL bilinear, as `SAMPredictor.set_image` does:
    `keras_sam.inference.transforms.resize_image`); the graph casts it to
    float32, normalises with the ImageNet mean and std, pads it with zeros
    bottom/right to the model's input size, encodes it and returns the
    embedding channels-first, as the decoder's `image_embeddings` input.

    Args:
        image_encoder: a `SAMImageEncoder`.

    Call arguments:
        inputs: dict with `image`: uint8 `(h, w, 3)` RGB, `max(h, w)` the
            model's input size.

    Returns:
        dict with `image_embeddings`: float32 `(1, C, He, We)`.
    """

    def __init__(self, image_encoder, **kwargs):
        super().__init__(**kwargs)
        self.image_encoder = image_encoder
        self.built = True  # of built parts; Keras' export checks it

    def input_specs(self) -> dict:
        """`{name: (shape, dtype)}` of the input; dynamic axes by name."""
        return {interface.IMAGE_ENCODER_INPUTS[0]: (("h", "w", 3), "uint8")}

    def output_shapes(self) -> dict:
        """`{name: shape}` of the output."""
        encoder = self.image_encoder
        shape = (1, encoder.num_output_channels, *encoder.grid_size)
        return {interface.IMAGE_ENCODER_OUTPUTS[0]: shape}

    def metadata(self) -> dict:
        """What `OnnxPredictor` needs beyond the tensor shapes."""
        h, w = self.image_encoder.image_shape[:2]
        return {interface.META_INPUT_SIZE: f"{h},{w}"}

    def call(self, inputs):
        image = inputs[interface.IMAGE_ENCODER_INPUTS[0]]
        x = normalize_and_pad(
            image, self.image_encoder.image_shape[:2], PIXEL_MEAN, PIXEL_STD
        )  # (1, S, S, 3)
        embeddings = self.image_encoder(x)  # (1, He, We, C)
        return {"image_embeddings": ops.transpose(embeddings, (0, 3, 1, 2))}
