"""Configurations of the SAM presets (plain dicts).

Official checkpoints: `url` and `sha256_prefix` locate and verify the file;
the file names published with SAM end with the first six hex digits of the
file's SHA-256, which is what is checked (the full digests are not published
alongside the files).

`sam_shapes` is our own small model, trained on `keras_sam.datasets.shapes`
by `scripts/train_shapes.py`; its weights ship inside the package
(`bundled`, relative to the package directory), so it needs no download.
"""

_PROMPT_ENCODER = dict(
    hidden_size=256,
    image_embedding_size=(64, 64),
    input_image_size=(1024, 1024),
    mask_in_channels=16,
)
_MASK_DECODER = dict(
    hidden_size=256,
    num_layers=2,
    intermediate_dim=2048,
    num_heads=8,
    embedding_dim=256,
    num_multimask_outputs=3,
    iou_head_depth=3,
    iou_head_hidden_dim=256,
)
_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


def _vit(hidden, layers, heads, global_indices):
    return dict(
        hidden_size=hidden,
        num_layers=layers,
        intermediate_dim=4 * hidden,
        num_heads=heads,
        global_attention_layer_indices=global_indices,
        image_shape=(1024, 1024, 3),
        patch_size=16,
        num_output_channels=256,
        window_size=14,
    )


PRESETS = {
    "sam_vit_b": dict(
        image_encoder=_vit(768, 12, 12, (2, 5, 8, 11)),
        prompt_encoder=_PROMPT_ENCODER,
        mask_decoder=_MASK_DECODER,
        url=_BASE_URL + "sam_vit_b_01ec64.pth",
        sha256_prefix="01ec64",
    ),
    "sam_vit_l": dict(
        image_encoder=_vit(1024, 24, 16, (5, 11, 17, 23)),
        prompt_encoder=_PROMPT_ENCODER,
        mask_decoder=_MASK_DECODER,
        url=_BASE_URL + "sam_vit_l_0b3195.pth",
        sha256_prefix="0b3195",
    ),
    "sam_vit_h": dict(
        image_encoder=_vit(1280, 32, 16, (7, 15, 23, 31)),
        prompt_encoder=_PROMPT_ENCODER,
        mask_decoder=_MASK_DECODER,
        url=_BASE_URL + "sam_vit_h_4b8939.pth",
        sha256_prefix="4b8939",
    ),
    "sam_shapes": dict(
        image_encoder=dict(
            hidden_size=128,
            num_layers=8,
            intermediate_dim=512,
            num_heads=4,
            global_attention_layer_indices=tuple(range(8)),
            image_shape=(256, 256, 3),
            patch_size=8,
            num_output_channels=128,
            window_size=8,
        ),
        prompt_encoder=dict(
            hidden_size=128,
            image_embedding_size=(32, 32),
            input_image_size=(256, 256),
            mask_in_channels=16,
        ),
        mask_decoder=dict(
            hidden_size=128,
            num_layers=2,
            intermediate_dim=256,
            num_heads=4,
            embedding_dim=128,
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=128,
        ),
        bundled="weights/sam_shapes/sam_shapes.safetensors",
    ),
}
