"""The exported files' names and tensor interfaces (plain constants).

Shared by the exporters and by `OnnxPredictor`, which must import without
Keras. The decoder follows the official SAM ONNX interface; the image
encoder takes the picture resized as the predictor resizes it.

Decoder (`decoder.onnx`), float32 unless said, `B` prompts, `N` points:

| input | shape | meaning |
|---|---|---|
| `image_embeddings` | `(1, C, He, We)` | the image encoder's output, NCHW |
| `point_coords` | `(B, N, 2)` | x, y in the model's input frame |
| `point_labels` | `(B, N)` | -1 padding, 0 bg, 1 fg, 2/3 box corners |
| `mask_input` | `(B or 1, 1, 4He, 4We)` | low-res logits, zeros if unused |
| `has_mask_input` | `(1,)` | 1 to use `mask_input`, else 0 |
| `orig_im_size` | `(2,)` | (H, W) of the original picture |

| output | shape | meaning |
|---|---|---|
| `masks` | `(B, M, H, W)` | logits at the picture's size (> 0: mask) |
| `iou_predictions` | `(B, M)` | predicted IoUs |
| `low_res_masks` | `(B, M, 4He, 4We)` | logits, as `mask_input` takes them |

`M` is `1 + num_multimask_outputs` (4 for SAM: index 0 the single-mask
output, 1-3 the multimask outputs), or 1 for a single-mask export.

Image encoder (`image_encoder.onnx`): `image` uint8 `(h, w, 3)` RGB, the
picture resized so that its long side is the model's input size `S` (1024
for SAM; PIL bilinear, `int(x * S / max(H, W) + 0.5)` for each side), ->
`image_embeddings` `(1, C, He, We)`. The graph normalises with the ImageNet
mean and std, pads bottom/right to `S x S` and encodes.
"""

DECODER_FILE = "decoder.onnx"
IMAGE_ENCODER_FILE = "image_encoder.onnx"
# ONNX external data of an image encoder beyond protobuf's 2 GB limit.
EXTERNAL_DATA_SUFFIX = ".data"

DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
IMAGE_ENCODER_INPUTS = ("image",)
IMAGE_ENCODER_OUTPUTS = ("image_embeddings",)

# Official `SamOnnxModel(return_single_mask=True)` rule: the single-mask
# output (index 0) wins when there are more than two points (padding and
# box corners counted), the best multimask output otherwise.
SINGLE_MASK_POINT_OFFSET = 2.5
SINGLE_MASK_WEIGHT = 1000.0

OPSET = 17

# Metadata properties of the exported files: the model's padded input size
# `(S_h, S_w)` as "h,w", and "1" for a single-mask decoder.
META_INPUT_SIZE = "keras_sam.input_image_size"
META_SINGLE_MASK = "keras_sam.single_mask"
