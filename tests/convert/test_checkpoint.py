"""Safe checkpoint reading/writing and SAM architecture detection."""

import contextlib
import io
import json
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import safe_open

import keras_sam
from keras_sam.convert import checkpoint
from keras_sam.models.presets import PRESETS
from keras_sam.models.sam import KERAS_SAFETENSORS_FORMAT
from support.reference import official  # installs the torchvision stub
from tests import helpers

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


def tiny_sam(decoder_heads=2, **encoder_overrides):
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
            depth=2, embedding_dim=16, mlp_dim=32, num_heads=decoder_heads
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
        "d": torch.randn(4, dtype=torch.float64),
    }
    path = tmp_path / f"half.{fmt}"
    if fmt == "pth":
        torch.save(tensors, path)
    else:
        safetensors.torch.save_file(tensors, path)
    got = checkpoint.read_state_dict(path)
    assert got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], tensors["w"].float().numpy())
    assert got["d"].dtype == np.float64  # kept
    np.testing.assert_array_equal(got["d"], tensors["d"].numpy())


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


# -- hostile files ---------------------------------------------------------
# Each file is small; what it declares is not. The loads run in a child
# process whose address space is capped a little above what it holds after
# its imports, so a check that fails makes a test fail, not the machine.

GUARDED_LOADS = r"""
import json, resource, sys, time
from keras_sam.models.sam import SAM

status = dict(line.split(":", 1) for line in open("/proc/self/status"))
limit = int(status["VmSize"].split()[0]) * 1024 + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results = {}
for name, path in json.loads(sys.argv[1]).items():
    start = time.perf_counter()
    try:
        SAM.from_checkpoint(path)
        outcome = ["loaded", ""]
    except BaseException as e:  # MemoryError included
        outcome = [type(e).__name__, str(e)]
    results[name] = outcome + [time.perf_counter() - start]
print("RESULTS " + json.dumps(results))
"""


def raw_safetensors(path, tensors, data=b"", metadata=None):
    """A safetensors file from a header written by hand: `tensors` maps
    names to (dtype, shape, data offsets)."""
    header = {
        k: {"dtype": d, "shape": list(s), "data_offsets": list(o)}
        for k, (d, s, o) in tensors.items()
    }
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def zip_bomb(path, mebibytes=256):
    """A torch.save zip whose one float32 tensor of `mebibytes` is stored
    deflated (zeros: a few hundred KB on disk), written without
    allocating it."""
    small = path.with_suffix(".small")
    torch.save({"w": torch.zeros(300)}, small)
    numel = mebibytes * 2**20 // 4
    with zipfile.ZipFile(small) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, data in entries:
            if name.endswith("data.pkl"):  # numel and size: 300 -> numel
                assert data.count(b"M\x2c\x01") == 2
                packed = b"J" + struct.pack("<i", numel)
                data = data.replace(b"M\x2c\x01", packed)
            if name.endswith("data/0"):
                with z.open(name, "w", force_zip64=True) as f:
                    for _ in range(mebibytes):
                        f.write(bytes(1 << 20))
                continue
            z.writestr(name, data)
    small.unlink()
    return path


def keras_sam_file(path, config, tensors):
    checkpoint.write_safetensors(
        tensors,
        path,
        metadata={
            "format": KERAS_SAFETENSORS_FORMAT,
            "config": json.dumps(config),
        },
    )
    return path


def _hostile_files(root, sam) -> dict:
    state = {k: v.detach().clone() for k, v in sam.state_dict().items()}
    files = {}

    # Zero-size tensors that declare a width of 16384.
    def wide_and_empty(shape):
        return (*(16384 if d == 32 else d for d in shape[:-1]), 0)

    files["safetensors_zero_size_wide"] = raw_safetensors(
        root / "wide.safetensors",
        {k: ("F32", wide_and_empty(v.shape), (0, 0)) for k, v in state.items()},
    )
    # pos_embed expanded to (1, 40000, 40000, 32) from 32 floats.
    expanded = dict(state)
    expanded["image_encoder.pos_embed"] = torch.randn(1, 1, 1, 32).expand(
        1, 40000, 40000, 32
    )
    torch.save(expanded, root / "zero_stride.pth")
    files["pth_zero_stride"] = root / "zero_stride.pth"
    # A view whose strides overlap: 1000 floats read as 3.2 million.
    overlapping = dict(state)
    overlapping["image_encoder.pos_embed"] = torch.randn(1000).as_strided(
        (1, 200, 500, 32), (0, 1, 1, 1)
    )
    torch.save(overlapping, root / "overlapping.pth")
    files["pth_overlapping_view"] = root / "overlapping.pth"
    files["pth_zip_bomb"] = zip_bomb(root / "bomb.pth")
    # Honest data, but a 129 x 129 token grid (ViT-H: 64 x 64).
    big_grid = dict(state)
    big_grid["image_encoder.pos_embed"] = torch.randn(1, 129, 129, 32)
    for axis in "hw":  # the global block's table spans the grid
        big_grid[f"image_encoder.blocks.1.attn.rel_pos_{axis}"] = torch.randn(
            257, 16
        )
    torch.save(big_grid, root / "big_grid.pth")
    files["pth_grid_beyond_vit_h"] = root / "big_grid.pth"
    # 64 encoder blocks named, two of them with weights.
    named = dict(state)
    for i in range(2, 64):
        named[f"image_encoder.blocks.{i}.norm1.weight"] = torch.ones(1)
        for axis in "hw":  # windowed blocks' tables
            named[f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"] = torch.ones(
                3, 16
            )
    checkpoint.write_safetensors(named, root / "named.safetensors")
    files["safetensors_blocks_without_weights"] = root / "named.safetensors"
    nan = dict(state)
    nan["mask_decoder.iou_token.weight"] = nan[
        "mask_decoder.iou_token.weight"
    ].clone()
    nan["mask_decoder.iou_token.weight"][0, 3] = float("nan")
    torch.save(nan, root / "nan.pth")
    files["pth_nan"] = root / "nan.pth"
    # keras-sam files whose stored config is huge, or has no weights.
    config = official_config(sam)
    huge = {k: dict(v) for k, v in config.items()}
    huge["image_encoder"]["hidden_size"] = 16384
    files["keras_sam_config_too_wide"] = keras_sam_file(
        root / "huge_config.safetensors", huge, {"w": np.ones(4, "f4")}
    )
    vit_h = {
        k: dict(v)
        for k, v in PRESETS["sam_vit_h"].items()
        if k in ("image_encoder", "prompt_encoder", "mask_decoder")
    }
    files["keras_sam_config_without_weights"] = keras_sam_file(
        root / "vit_h_config.safetensors", vit_h, {"w": np.ones(4, "f4")}
    )
    return files


HOSTILE = {
    "safetensors_zero_size_wide": "zero dimension",
    "pth_zero_stride": r"strides \[.*\], a view repeating its data \(zero",
    "pth_overlapping_view": "storage holds only 4000",
    "pth_zip_bomb": r"zip entries \(\d+ of \d+ compressed\) expand to 2684",
    "pth_grid_beyond_vit_h": (
        r"image_shape\[0\]=2064 exceeds the limit 2048 \(twice ViT-H's 1024"
    ),
    "safetensors_blocks_without_weights": (
        r"fewer than the \d+ at least .* \(64 image encoder blocks"
    ),
    "pth_nan": (
        "tensor 'mask_decoder.iou_token.weight' holds 1 non-finite values"
    ),
    "keras_sam_config_too_wide": (
        r"image_encoder.hidden_size=16384 exceeds the limit 2560 \(twice "
        "ViT-H's 1280"
    ),
    "keras_sam_config_without_weights": "fewer than the",
}


@pytest.fixture(scope="module")
def hostile_loads(tmp_path_factory, sam):
    files = _hostile_files(tmp_path_factory.mktemp("hostile"), sam)
    for path in files.values():
        assert path.stat().st_size < 10 * 2**20, path
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            GUARDED_LOADS,
            json.dumps({k: str(v) for k, v in files.items()}),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    lines = [
        line for line in result.stdout.splitlines() if line[:8] == "RESULTS "
    ]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return files, json.loads(lines[0][8:])


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_checkpoint_is_refused_before_allocating(hostile_loads, case):
    files, results = hostile_loads
    kind, message, seconds = results[case]
    assert kind == "ValueError", (kind, message)
    assert re.search(HOSTILE[case], message), message
    assert str(files[case]) in message  # names the file
    assert "\n" not in message  # one line for the CLI
    # No pass over the gigabytes the file declares (RLIMIT_AS above keeps
    # it from allocating them); not a speed check: 16 s was seen on a
    # machine at load 14, so the bound only catches a runaway loop.
    assert seconds < 120


@pytest.mark.parametrize(
    "dtype, name",
    [
        (torch.int64, "int64"),
        (torch.int32, "int32"),
        (torch.uint8, "uint8"),
        (torch.bool, "bool"),
        (torch.complex64, "complex64"),
    ],
)
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_non_float_tensors_are_refused(tmp_path, dtype, name, fmt):
    tensors = {"w": torch.ones(3), "x": torch.ones(2, 2).to(dtype)}
    path = tmp_path / f"ints.{fmt}"
    if fmt == "pth":
        torch.save(tensors, path)
    elif dtype == torch.complex64:  # not every safetensors writes it
        raw_safetensors(
            path,
            {"w": ("F32", (3,), (0, 12)), "x": ("C64", (2, 2), (12, 44))},
            bytes(44),
        )
    else:
        safetensors.torch.save_file(tensors, path)
    with pytest.raises(ValueError, match=f"tensor 'x' has dtype {name},"):
        checkpoint.read_state_dict(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_non_finite_weights_are_refused(tmp_path, value, fmt):
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    w[1, 2] = value
    tensors = {"a": torch.ones(2), "w": w}
    path = tmp_path / f"nan.{fmt}"
    if fmt == "pth":
        torch.save(tensors, path)
    else:
        safetensors.torch.save_file(tensors, path)
    with pytest.raises(ValueError, match="tensor 'w' holds 1 non-finite"):
        checkpoint.read_state_dict(path)


@pytest.mark.parametrize(
    "tensors, size, match",
    [
        # Shape larger than the data offsets.
        ({"w": ("F32", (4000, 4), (0, 64))}, 64, "needs 64000 bytes"),
        # Offsets past the end of the file.
        ({"w": ("F32", (4, 4), (0, 64))}, 32, "in 32 bytes of tensor data"),
        # Two tensors on the same bytes.
        (
            {"a": ("F32", (4, 4), (0, 64)), "b": ("F32", (4, 4), (0, 64))},
            64,
            "its tensors declare 128 bytes",
        ),
        ({"w": ("F32", (4, "x"), (0, 64))}, 64, "malformed header entry"),
    ],
)
def test_safetensors_sizes_the_file_cannot_hold(tmp_path, tensors, size, match):
    path = raw_safetensors(tmp_path / "w.safetensors", tensors, bytes(size))
    with pytest.raises(ValueError, match=match) as info:
        checkpoint.read_state_dict(path)
    assert str(path) in str(info.value)


def test_zero_size_tensor_is_refused(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"w": torch.ones(2), "e": torch.zeros(3, 0)}, path)
    with pytest.raises(ValueError, match=r"'e' has shape \[3, 0\]"):
        checkpoint.read_state_dict(path)


def test_transposed_views_are_read(tmp_path):
    """A non-contiguous view that repeats nothing is a valid tensor."""
    w = torch.randn(3, 5)
    path = tmp_path / "t.pth"
    torch.save({"w": w.t()}, path)
    np.testing.assert_array_equal(
        checkpoint.read_state_dict(path)["w"], w.t().numpy()
    )


def _shapes(sam, **changes):
    shapes = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    shapes.update(changes)
    return shapes


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"image_encoder.patch_embed.proj.weight": (16384, 3, 16, 16)},
            r"hidden_size=16384 exceeds the limit 2560 \(twice ViT-H's 1280",
        ),
        (
            {"mask_decoder.transformer.layers.0.mlp.lin1.weight": (4097, 16)},
            r"mask_decoder.intermediate_dim=4097 exceeds the limit 4096",
        ),
        (
            {"mask_decoder.iou_prediction_head.layers.0.weight": (513, 16)},
            r"iou_head_hidden_dim=513 exceeds the limit 512",
        ),
        (
            {"image_encoder.patch_embed.proj.weight": (32, 3, 16)},
            "must have 4 dimensions",
        ),
    ],
)
def test_detect_refuses_beyond_vit_h(sam, changes, match):
    with pytest.raises(ValueError, match=match):
        checkpoint.detect_architecture(
            _shapes(sam, **changes), mask_decoder_num_heads=2
        )


def test_detect_refuses_more_blocks_than_twice_vit_h():
    with torch.device("meta"):
        shapes = {
            k: tuple(v.shape)
            for k, v in official.sam_model_registry["vit_h"]()
            .state_dict()
            .items()
        }
    block = {
        k.split(".", 3)[3]: v
        for k, v in shapes.items()
        if k.startswith("image_encoder.blocks.31.")
    }
    for i in range(32, 64):
        shapes.update(
            {f"image_encoder.blocks.{i}.{k}": v for k, v in block.items()}
        )
    assert (
        checkpoint.detect_architecture(shapes)["image_encoder"]["num_layers"]
        == 64
    )
    shapes.update({f"image_encoder.blocks.64.{k}": v for k, v in block.items()})
    with pytest.raises(ValueError, match="num_layers=65 exceeds the limit 64"):
        checkpoint.detect_architecture(shapes)


@pytest.mark.parametrize("heads", [3, 0, -2, True, 2.0, "8"])
def test_detect_refuses_bad_decoder_head_counts(sam, heads):
    with pytest.raises(ValueError, match="mask_decoder_num_heads"):
        checkpoint.detect_architecture(
            sam.state_dict(), mask_decoder_num_heads=heads
        )


def test_check_architecture_of_presets():
    for preset in PRESETS.values():
        checkpoint.check_architecture(preset)


# -- the decoder's head count, keras-sam files ---------------------------


def test_from_checkpoint_with_the_decoder_head_count(tmp_path):
    ref = tiny_sam(decoder_heads=4)
    path = tmp_path / "four_heads.pth"
    torch.save(ref.state_dict(), path)
    rng = np.random.default_rng(0)
    inputs = {
        "image_embeddings": rng.normal(size=(1, 4, 4, 16)),
        "prompt_dense_positional_embeddings": rng.normal(size=(1, 4, 4, 16)),
        "prompt_sparse_embeddings": rng.normal(size=(2, 3, 16)),
        "prompt_dense_embeddings": rng.normal(size=(2, 4, 4, 16)),
    }
    inputs = {k: v.astype("float32") for k, v in inputs.items()}
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    nchw = (0, 3, 1, 2)
    with torch.no_grad():
        masks, iou = ref.mask_decoder.predict_masks(
            image_embeddings=t["image_embeddings"].permute(nchw),
            image_pe=t["prompt_dense_positional_embeddings"].permute(nchw),
            sparse_prompt_embeddings=t["prompt_sparse_embeddings"],
            dense_prompt_embeddings=t["prompt_dense_embeddings"].permute(nchw),
        )
    model = keras_sam.SAM.from_checkpoint(path, mask_decoder_num_heads=4)
    assert model.mask_decoder.num_heads == 4
    out = model.mask_decoder(**inputs)
    helpers.assert_close(
        out["masks"], official.to_numpy(masks), helpers.DECODER_RTOL
    )
    helpers.assert_close(
        out["iou_pred"], official.to_numpy(iou), helpers.DECODER_RTOL
    )
    # The default, 8 heads, loads the same weights without complaint and
    # computes something else: why the count must be given.
    config = checkpoint.detect_architecture(ref.state_dict())
    assert config["mask_decoder"]["num_heads"] == 8
    wrong = keras_sam.SAMMaskDecoder(**config["mask_decoder"])
    keras_sam.load_official_weights(wrong, ref.mask_decoder.state_dict())
    assert (
        helpers.rel_max_err(wrong(**inputs)["masks"], official.to_numpy(masks))
        > 1e-3
    )


def test_from_checkpoint_reads_keras_sam_files(tmp_path):
    config = official_config(tiny_sam())
    model = keras_sam.SAM.from_config_dicts(**config, name="tiny")
    model.build()
    path = tmp_path / "tiny.safetensors"
    model.save_keras_safetensors(path)
    again = keras_sam.SAM.from_checkpoint(path)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="disagrees with the 2 heads"):
        keras_sam.SAM.from_checkpoint(path, mask_decoder_num_heads=8)


def test_load_checkpoint_errors_name_the_file(sam, tmp_path):
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)
    other = keras_sam.SAM.from_config_dicts(
        **{
            **official_config(sam),
            "mask_decoder": {
                **official_config(sam)["mask_decoder"],
                "iou_head_hidden_dim": 8,
            },
        }
    )
    other.build()
    with pytest.raises(ValueError, match="shape mismatches|does not fit") as e:
        other.load_checkpoint(path)
    assert str(e.value).startswith(f"Checkpoint {str(path)!r} does not fit")


# -- keras-sam info ------------------------------------------------------


def _info(path) -> dict:
    from keras_sam import cli
    from keras_sam.cli import info

    parser = cli.build_parser()
    args = parser.parse_args(["info", str(path)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert info.run(parser, args) == 0
    return json.loads(out.getvalue())


def test_info_reads_the_bundled_file():
    path = Path(keras_sam.__file__).parent / PRESETS["sam_shapes"]["bundled"]
    data = _info(path)
    assert data["format"] == "keras_sam.variable_paths"
    assert data["preset"] == "sam_shapes"
    assert data["tensors"] == 258
    assert data["parameters"] > 2_000_000
    assert data["architecture"]["mask_decoder"]["num_heads"] == 4
    assert data["assumed"] == {}


def test_info_says_the_decoder_head_count_is_assumed(sam, pth_file):
    data = _info(pth_file)
    assert data["format"] == "official"
    assert data["assumed"] == {"mask_decoder.num_heads": 8}
    assert data["architecture"]["mask_decoder"]["num_heads"] == 8
    assert data["parameters"] == sum(
        v.numel() for v in sam.state_dict().values()
    )


def test_info_error_is_one_line(tmp_path, capsys, monkeypatch):
    from keras_sam import cli

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    path = tmp_path / "ints.safetensors"
    safetensors.torch.save_file({"x": torch.ones(2, dtype=torch.int64)}, path)
    assert cli.main(["info", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "int64" in err
