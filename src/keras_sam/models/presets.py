"""Configurations of the SAM presets (plain dicts).

Official checkpoints: `url` locates the file, `sha256` (the full digest) and
`size` (bytes, None where unknown) verify it (`keras_sam.convert.download`).
The six hex digits in the official file names are not the start of the
file's SHA-256.

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
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size=375_042_383,
    ),
    "sam_vit_l": dict(
        image_encoder=_vit(1024, 24, 16, (5, 11, 17, 23)),
        prompt_encoder=_PROMPT_ENCODER,
        mask_decoder=_MASK_DECODER,
        url=_BASE_URL + "sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size=None,
    ),
    "sam_vit_h": dict(
        image_encoder=_vit(1280, 32, 16, (7, 15, 23, 31)),
        prompt_encoder=_PROMPT_ENCODER,
        mask_decoder=_MASK_DECODER,
        url=_BASE_URL + "sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size=2_564_550_879,
    ),
    # MobileSAM: SAM's prompt encoder and decoder with a TinyViT-5M image
    # encoder (its official `build_sam_vit_t`); SAM's 1024-pixel input and
    # pixel statistics.
    "mobile_sam": dict(
        image_encoder=dict(
            hidden_sizes=(64, 128, 160, 320),
            num_layers=(2, 2, 6, 2),
            num_heads=(4, 5, 10),
            window_sizes=(7, 14, 7),
            downsample_strides=(2, 2, 1),
            image_shape=(1024, 1024, 3),
            mlp_ratio=4.0,
            mbconv_expansion_ratio=4.0,
            local_conv_size=3,
            num_output_channels=256,
        ),
        prompt_encoder=_PROMPT_ENCODER,
        mask_decoder=_MASK_DECODER,
        url=(
            "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/"
            "master/weights/mobile_sam.pt"
        ),
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size=None,
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
