"""keras-hub's SAM as an oracle: a tiny seeded `SAMBackbone` (on the
current Keras backend) and its parts."""

import keras
import numpy as np

IMAGE_SIZE = 64
# keras-hub's ViTDet normalises inside the model: its input is 0-1 pixels.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], "float32")
IMAGENET_STD = np.array([0.229, 0.224, 0.225], "float32")


def make_backbone(seed: int = 0):
    """A tiny `SAMBackbone` (64-pixel images, 8x8 grid), every variable
    seeded random, its mask decoder built (the backbone's functional graph
    does not call it). Returns the backbone."""
    # Imported here, not with this module: keras_hub imports TensorFlow
    # (seconds), which every pytest worker would pay while collecting.
    import keras_hub

    encoder = keras_hub.models.ViTDetBackbone(
        hidden_size=16,
        num_layers=2,
        intermediate_dim=32,
        num_heads=2,
        global_attention_layer_indices=[1],
        patch_size=8,
        num_output_channels=8,
        window_size=4,
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
    )
    prompt_encoder = keras_hub.layers.SAMPromptEncoder(
        hidden_size=8,
        image_embedding_size=(8, 8),
        input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
        mask_in_channels=4,
    )
    mask_decoder = keras_hub.layers.SAMMaskDecoder(
        num_layers=2,
        hidden_size=8,
        intermediate_dim=16,
        num_heads=2,
        embedding_dim=8,
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=8,
    )
    backbone = keras_hub.models.SAMBackbone(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
    )
    mask_decoder.build()
    rng = np.random.default_rng(seed)
    for variable in backbone.weights + mask_decoder.weights:
        value = rng.normal(0.0, 0.2, variable.shape).astype("float32")
        if variable.path.endswith("gamma"):
            value += 1.0
        variable.assign(value)
    return backbone


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))
