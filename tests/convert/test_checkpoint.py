"""Safe checkpoint reading/writing and SAM architecture detection."""

import os
import pickle
import shlex

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import safe_open

import keras_sam
from keras_sam.convert import checkpoint
from support.reference import official  # installs the torchvision stub

TINY_ENCODER = dict(
    img_size=64,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    mlp_ratio=2,
    out_chans=16,
    window_size=2,
    global_attn_indexes=(1,),
    use_rel_pos=True,
    qkv_bias=True,
)


def tiny_sam(**encoder_overrides):
    """A seeded official `Sam` with tiny modules."""
    modeling = official.modeling
    torch.manual_seed(0)
    image_encoder = modeling.ImageEncoderViT(
        **{**TINY_ENCODER, **encoder_overrides}
    )
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=16,
        image_embedding_size=(4, 4),
        input_image_size=(64, 64),
        mask_in_chans=8,
    )
    mask_decoder = modeling.MaskDecoder(
        transformer_dim=16,
        transformer=modeling.TwoWayTransformer(
            depth=2, embedding_dim=16, mlp_dim=32, num_heads=2
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=24,
    )
    sam = modeling.Sam(image_encoder, prompt_encoder, mask_decoder)
    official.randomize_(sam, 0)
    return sam.eval()


def official_config(sam) -> dict:
    """The configuration of an official `Sam`, read from its modules."""
    enc, pe, dec = sam.image_encoder, sam.prompt_encoder, sam.mask_decoder
    blocks = list(enc.blocks)
    return {
        "image_encoder": {
            "hidden_size": enc.patch_embed.proj.out_channels,
            "num_layers": len(blocks),
            "intermediate_dim": blocks[0].mlp.lin1.out_features,
            "num_heads": blocks[0].attn.num_heads,
            "global_attention_layer_indices": tuple(
                i for i, b in enumerate(blocks) if b.window_size == 0
            ),
            "image_shape": (
                enc.img_size,
                enc.img_size,
                enc.patch_embed.proj.in_channels,
            ),
            "patch_size": enc.patch_embed.proj.kernel_size[0],
            "num_output_channels": enc.neck[0].out_channels,
            "window_size": max(b.window_size for b in blocks),
            "use_bias": blocks[0].attn.qkv.bias is not None,
            "use_abs_pos": enc.pos_embed is not None,
            "use_rel_pos": blocks[0].attn.use_rel_pos,
        },
        "prompt_encoder": {
            "hidden_size": pe.embed_dim,
            "image_embedding_size": tuple(pe.image_embedding_size),
            "input_image_size": tuple(pe.input_image_size),
            "mask_in_channels": pe.mask_downscaling[3].out_channels,
        },
        "mask_decoder": {
            "hidden_size": dec.transformer_dim,
            "num_layers": dec.transformer.depth,
            "intermediate_dim": dec.transformer.layers[0].mlp.lin1.out_features,
            "num_heads": dec.transformer.num_heads,
            "embedding_dim": dec.transformer_dim,
            "num_multimask_outputs": dec.num_multimask_outputs,
            "iou_head_depth": dec.iou_prediction_head.num_layers,
            "iou_head_hidden_dim": (
                dec.iou_prediction_head.layers[0].out_features
            ),
        },
    }


def numpy_state_dict(module) -> dict:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def sam():
    return tiny_sam()


@pytest.fixture
def pth_file(sam, tmp_path):
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture
def safetensors_file(sam, tmp_path):
    path = tmp_path / "sam.safetensors"
    checkpoint.write_safetensors(sam.state_dict(), path)
    return path


def assert_state_dicts_equal(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert isinstance(got[key], np.ndarray), key
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# -- reading -------------------------------------------------------------


def test_pth_round_trip(sam, pth_file):
    got = checkpoint.read_state_dict(pth_file)
    assert_state_dicts_equal(got, numpy_state_dict(sam))


def test_safetensors_round_trip(sam, safetensors_file):
    got = checkpoint.read_state_dict(str(safetensors_file))
    assert sorted(got) == sorted(numpy_state_dict(sam))
    assert_state_dicts_equal(
        {k: got[k] for k in numpy_state_dict(sam)}, numpy_state_dict(sam)
    )


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_other_torch_suffixes(sam, tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    torch.save(sam.state_dict(), path)
    assert_state_dicts_equal(
        checkpoint.read_state_dict(path), numpy_state_dict(sam)
    )


@pytest.mark.parametrize("wrapper_key", ["model", "state_dict"])
def test_wrapped_state_dict(sam, tmp_path, wrapper_key):
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper_key: sam.state_dict(), "epoch": 3}, path)
    assert_state_dicts_equal(
        checkpoint.read_state_dict(path), numpy_state_dict(sam)
    )


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_unknown_suffix_is_sniffed(sam, tmp_path, fmt, request):
    source = request.getfixturevalue(f"{fmt}_file")
    path = tmp_path / "weights.ckpt"
    path.write_bytes(source.read_bytes())
    got = checkpoint.read_state_dict(path)
    expected = numpy_state_dict(sam)
    assert_state_dicts_equal({k: got[k] for k in expected}, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_half_precision_becomes_float32(tmp_path, dtype, fmt):
    torch.manual_seed(0)
    tensors = {
        "w": torch.randn(3, 5).to(dtype),
        "i": torch.arange(4, dtype=torch.int64),
    }
    path = tmp_path / f"half.{fmt}"
    if fmt == "pth":
        torch.save(tensors, path)
    else:
        safetensors.torch.save_file(tensors, path)
    got = checkpoint.read_state_dict(path)
    assert got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], tensors["w"].float().numpy())
    assert got["i"].dtype == np.int64
    np.testing.assert_array_equal(got["i"], np.arange(4))


class Evil:
    """Unpickling this runs a shell command (a `__reduce__` payload)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_pickle_is_refused_without_running(tmp_path, zipfile):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save(
        {"w": torch.zeros(1), "evil": Evil(marker)},
        path,
        _use_new_zipfile_serialization=zipfile,
    )
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only") as info:
        checkpoint.read_state_dict(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_malicious_pickle_with_unknown_suffix(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"evil": Evil(marker)}, path)
    with pytest.raises(ValueError, match="weights_only"):
        checkpoint.read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "contents, key",
    [
        ({"w": torch.zeros(2), "step": 3}, "step"),
        ({"w": torch.zeros(2), "name": "vit_b"}, "name"),
        ({"w": torch.zeros(2), "sub": {"a": torch.ones(1)}}, "sub"),
        ({"w": torch.zeros(2), "list": [torch.ones(1)]}, "list"),
    ],
)
def test_non_tensor_entries_are_refused(tmp_path, contents, key):
    path = tmp_path / "mixed.pth"
    torch.save(contents, path)
    with pytest.raises(ValueError, match=f"'{key}'"):
        checkpoint.read_state_dict(path)


def test_top_level_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        checkpoint.read_state_dict(path)


def _cut(data: bytes, how: str) -> bytes:
    return {
        "half": data[: len(data) // 2],
        "last_byte": data[:-1],
        "header_only": data[:12],
        "four_bytes": data[:4],
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
    }[how]


@pytest.mark.parametrize(
    "how", ["half", "last_byte", "header_only", "four_bytes", "empty", "random"]
)
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "ckpt"])
def test_corrupt_files_give_value_error(tmp_path, pth_file, how, fmt):
    if fmt == "safetensors":
        source = tmp_path / "src.safetensors"
        checkpoint.write_safetensors({"w": np.ones((64, 64), "f4")}, source)
    else:
        source = pth_file
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(_cut(source.read_bytes(), how))
    with pytest.raises(ValueError) as info:
        checkpoint.read_state_dict(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        checkpoint.read_state_dict(tmp_path / "nope.pth")


def test_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        checkpoint.read_state_dict(tmp_path)


# -- writing -------------------------------------------------------------


def test_write_safetensors_metadata_and_overwrite(tmp_path):
    path = tmp_path / "w.safetensors"
    checkpoint.write_safetensors({"a": np.zeros(3, "f4")}, path)
    checkpoint.write_safetensors(
        {"b": torch.ones(2, 2)}, path, metadata={"format": "pt"}
    )
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert list(f.keys()) == ["b"]
    np.testing.assert_array_equal(
        checkpoint.read_state_dict(path)["b"], np.ones((2, 2), "f4")
    )
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def test_write_safetensors_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    checkpoint.write_safetensors({"a": np.arange(3, dtype="f4")}, path)
    before = path.read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_safetensors({"a": np.zeros(3, "f4")}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


@pytest.mark.parametrize(
    "state_dict, metadata, match",
    [
        ({"a": [1.0, 2.0]}, None, "state_dict"),
        ({1: np.zeros(1)}, None, "keys must be strings"),
        ({"a": np.zeros(1)}, {"k": 1}, "metadata"),
    ],
)
def test_write_safetensors_bad_input(tmp_path, state_dict, metadata, match):
    with pytest.raises(ValueError, match=match):
        checkpoint.write_safetensors(
            state_dict, tmp_path / "x.safetensors", metadata=metadata
        )
    assert os.listdir(tmp_path) == []


# -- architecture detection ----------------------------------------------


def test_detect_tiny_sam(sam):
    expected = official_config(sam)
    heads = expected["mask_decoder"]["num_heads"]
    for state_dict in (
        sam.state_dict(),
        numpy_state_dict(sam),
        {k: v.shape for k, v in sam.state_dict().items()},
    ):
        got = checkpoint.detect_architecture(
            state_dict, mask_decoder_num_heads=heads
        )
        assert got == expected


def test_detect_from_read_file_and_load(sam, pth_file):
    """The detected config builds keras-sam layers the weights load into."""
    state_dict = checkpoint.read_state_dict(pth_file)
    config = checkpoint.detect_architecture(
        state_dict,
        mask_decoder_num_heads=official_config(sam)["mask_decoder"][
            "num_heads"
        ],
    )
    layers = {
        "image_encoder": keras_sam.SAMImageEncoder(**config["image_encoder"]),
        "prompt_encoder": keras_sam.SAMPromptEncoder(
            **config["prompt_encoder"]
        ),
        "mask_decoder": keras_sam.SAMMaskDecoder(**config["mask_decoder"]),
    }
    for key, layer in layers.items():
        layer_config = layer.get_config()
        assert {k: layer_config[k] for k in config[key]} == config[key]
    # Building is slow; the prompt encoder and decoder tables are covered by
    # test_weights.py, the image encoder's config is the one detected here.
    keras_sam.load_official_weights(layers["image_encoder"], state_dict)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(window_size=0, global_attn_indexes=()),  # every block global
        dict(depth=3, global_attn_indexes=(0, 2), qkv_bias=False),
        dict(img_size=96, window_size=3, num_heads=4),
    ],
    ids=["all_global", "no_qkv_bias", "img96_window3"],
)
def test_detect_other_encoder_configs(overrides):
    sam = tiny_sam(**overrides)
    expected = official_config(sam)
    # The prompt encoder was built for 64x64; detection derives its sizes
    # from the image encoder, as the official builder does.
    got = checkpoint.detect_architecture(
        sam.state_dict(),
        mask_decoder_num_heads=expected["mask_decoder"]["num_heads"],
    )
    assert got["image_encoder"] == expected["image_encoder"]
    assert got["mask_decoder"] == expected["mask_decoder"]


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_detect_official_sizes_on_meta(name):
    with torch.device("meta"):
        sam = official.sam_model_registry[name]()
    # Default decoder heads: those of every official checkpoint.
    got = checkpoint.detect_architecture(sam.state_dict())
    assert got == official_config(sam)


def test_detect_without_rel_pos_needs_overrides():
    sam = tiny_sam(use_rel_pos=False)
    expected = official_config(sam)
    state_dict = numpy_state_dict(sam)
    with pytest.raises(ValueError, match="image_encoder_num_heads"):
        checkpoint.detect_architecture(state_dict)
    got = checkpoint.detect_architecture(
        state_dict,
        mask_decoder_num_heads=expected["mask_decoder"]["num_heads"],
        image_encoder_num_heads=expected["image_encoder"]["num_heads"],
        window_size=expected["image_encoder"]["window_size"],
        global_attention_layer_indices=expected["image_encoder"][
            "global_attention_layer_indices"
        ],
    )
    assert got == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window_size=7), "window_size"),
        (dict(image_encoder_num_heads=4), "image_encoder_num_heads"),
        (
            dict(global_attention_layer_indices=(0,)),
            "global_attention_layer_indices",
        ),
    ],
)
def test_detect_overrides_must_agree_with_shapes(sam, kwargs, match):
    with pytest.raises(ValueError, match=match):
        checkpoint.detect_architecture(sam.state_dict(), **kwargs)


def test_detect_non_sam_state_dict():
    state_dict = {"encoder.weight": np.zeros((4, 4))}
    with pytest.raises(ValueError, match="image_encoder.patch_embed.proj"):
        checkpoint.detect_architecture(state_dict)


def test_detect_partial_sam_names_missing_keys(sam):
    state_dict = {
        k: v
        for k, v in sam.state_dict().items()
        if not k.startswith("mask_decoder.")
    }
    with pytest.raises(ValueError, match="mask_decoder.iou_token.weight"):
        checkpoint.detect_architecture(state_dict)


def test_detect_non_shape_values(sam):
    state_dict = dict(sam.state_dict())
    state_dict["image_encoder.neck.0.weight"] = "not a tensor"
    with pytest.raises(ValueError, match="image_encoder.neck.0.weight"):
        checkpoint.detect_architecture(state_dict)
