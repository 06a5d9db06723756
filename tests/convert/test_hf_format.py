"""Hugging Face `SamModel` checkpoints: names, loading, parity, errors."""

import json
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch

import keras_sam
from keras_sam.convert import formats
from keras_sam.convert import hf_mapping
from support.reference import huggingface
from tests import helpers


@pytest.fixture(scope="module")
def hf_model():
    return huggingface.make_sam_model(seed=0)


@pytest.fixture(scope="module")
def hf_folder(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "sam"
    hf_model.save_pretrained(folder)
    return folder


def _copy(folder, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def _ours(model, images, points=None, labels=None, boxes=None, multi=True):
    """Our model on the prompt `huggingface.run` gets (the padding point
    appended without a box, as the official prompt encoder does)."""
    # Compiled: eager JAX dispatches op by op (minutes for these cases).
    embeddings = helpers.to_numpy(
        model.compiled_method("encode_image")(images.transpose(0, 2, 3, 1))
    )
    kwargs = {}
    if points is not None:
        if boxes is None:
            points = np.concatenate([points, np.zeros((1, 2))])
            labels = np.concatenate([labels, [-1]])
        kwargs["points"] = points[None].astype("float32")
        kwargs["labels"] = labels[None].astype("float32")
    if boxes is not None:
        kwargs["boxes"] = boxes.reshape(1, 1, 2, 2).astype("float32")
    out = model.compiled_method("decode")(embeddings, **kwargs)
    picked = slice(1, None) if multi else slice(0, 1)
    return {
        "image_embeddings": embeddings,
        "masks": helpers.to_numpy(out["masks"])[:, picked],
        "iou_pred": helpers.to_numpy(out["iou_pred"])[:, picked],
    }


def test_hf_checkpoint_matches_sam_model(hf_model, hf_folder):
    model = keras_sam.SAM.from_checkpoint(hf_folder)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(1, 3, 64, 64)).astype("float32")
    points = rng.uniform(0, 64, size=(2, 2)).astype("float32")
    labels = np.array([1, 0])
    box = np.array([6.0, 9.0, 50.0, 41.0], "float32")
    for prompt in (
        dict(points=points, labels=labels),
        dict(boxes=box),
        dict(points=points, labels=labels, boxes=box),
    ):
        for multi in (True, False):
            ref = huggingface.run(
                hf_model, images, multimask_output=multi, **prompt
            )
            ours = _ours(model, images, multi=multi, **prompt)
            for key in ("image_embeddings", "masks", "iou_pred"):
                helpers.assert_close(
                    ours[key],
                    ref[key],
                    helpers.PREDICTOR_RTOL,
                    f"{key} {sorted(prompt)} multimask={multi}",
                )


def test_weights_file_alone_pytorch_bin_and_shards_load_the_same(
    hf_model, hf_folder, tmp_path
):
    from_folder = keras_sam.SAM.from_checkpoint(hf_folder)
    alone = keras_sam.SAM.from_checkpoint(hf_folder / "model.safetensors")
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(hf_folder / "config.json", binary)
    torch.save(hf_model.state_dict(), binary / "pytorch_model.bin")
    from_bin = keras_sam.SAM.from_checkpoint(binary)
    sharded = tmp_path / "sharded"
    hf_model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert not (sharded / "model.safetensors").exists()
    from_shards = keras_sam.SAM.from_checkpoint(sharded)
    for other in (alone, from_bin, from_shards):
        for a, b in zip(from_folder.weights, other.weights, strict=True):
            np.testing.assert_array_equal(
                helpers.to_numpy(a), helpers.to_numpy(b)
            )
    found = formats.read_checkpoint(binary)
    assert found.format == "huggingface"
    # The heads come from config.json: nothing is assumed.
    assert found.assumed == {}
    assert found.config["mask_decoder"]["num_heads"] == 2
    assert formats.read_checkpoint(hf_folder / "model.safetensors").assumed == {
        "mask_decoder.num_heads": 8
    }


def test_every_hf_name_translates_to_an_official_one(hf_model):
    from support.reference import official

    names = set(hf_mapping.official_state_dict(hf_model.state_dict()))
    # An official Sam of the same depths has exactly these names.
    sam = official.make_sam(
        {**helpers.TINY_64_ENCODER, "patch_size": 8, "num_output_channels": 16},
        prompt_dim=16,
        decoder_mlp_dim=32,
    )
    assert names == set(sam.state_dict())


def test_mlp_rule_renumbers_in_order():
    depths = {"mask_decoder.iou_prediction_head": 4}
    assert [
        hf_mapping.official_name(
            f"mask_decoder.iou_prediction_head.{layer}.weight", depths
        )
        for layer in ("proj_in", "layers.0", "layers.1", "proj_out")
    ] == [
        f"mask_decoder.iou_prediction_head.layers.{j}.weight" for j in range(4)
    ]


def test_tied_fourier_matrix(hf_model):
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    shared = state["shared_image_embedding.positional_embedding"]
    state["prompt_encoder.shared_embedding.positional_embedding"] = shared
    hf_mapping.official_state_dict(state)  # equal copies: accepted
    state["prompt_encoder.shared_embedding.positional_embedding"] = shared + 1
    with pytest.raises(ValueError, match="positional_encoding_gaussian"):
        hf_mapping.official_state_dict(state)


def _save_state(state, path):
    safetensors.numpy.save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, path
    )


@pytest.fixture
def hf_state(hf_model):
    return {k: v.numpy().copy() for k, v in hf_model.state_dict().items()}


def test_truncated_weights(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        keras_sam.SAM.from_checkpoint(folder)


def test_mixed_names_refused(hf_state, tmp_path):
    hf_state["image_encoder.pos_embed"] = hf_state["vision_encoder.pos_embed"]
    _save_state(hf_state, tmp_path / "mixed.safetensors")
    with pytest.raises(ValueError, match="mixes Hugging Face"):
        keras_sam.SAM.from_checkpoint(tmp_path / "mixed.safetensors")


def test_unknown_and_missing_keys_listed(hf_state, tmp_path):
    hf_state["vision_encoder.extra.weight"] = np.ones(3, "float32")
    _save_state(hf_state, tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match="vision_encoder.extra.weight"):
        keras_sam.SAM.from_checkpoint(tmp_path / "extra.safetensors")
    del hf_state["vision_encoder.extra.weight"]
    del hf_state["mask_decoder.upscale_conv2.bias"]
    _save_state(hf_state, tmp_path / "short.safetensors")
    with pytest.raises(ValueError, match="output_upscaling.3.bias"):
        keras_sam.SAM.from_checkpoint(tmp_path / "short.safetensors")


def test_official_weights_in_an_hf_folder_refused(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    state = safetensors.numpy.load_file(folder / "model.safetensors")
    official = hf_mapping.official_state_dict(state)
    _save_state(official, folder / "model.safetensors")
    with pytest.raises(ValueError, match="SamModel's names"):
        keras_sam.SAM.from_checkpoint(folder)


@pytest.mark.parametrize(
    "section, key, value, match",
    [
        ("vision_config", "hidden_size", 64, "vision_config.hidden_size=64"),
        ("vision_config", "num_attention_heads", 4, "image_encoder_num_heads"),
        ("mask_decoder_config", "num_hidden_layers", 3, "num_hidden_layers=3"),
        ("mask_decoder_config", "hidden_act", "gelu", "hidden_act"),
    ],
)
def test_config_disagreeing_with_weights(
    hf_folder, tmp_path, section, key, value, match
):
    folder = _copy(hf_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[section][key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        keras_sam.SAM.from_checkpoint(folder)


def test_heads_argument_disagreeing_with_config(hf_folder):
    with pytest.raises(ValueError, match="mask_decoder_num_heads=4"):
        keras_sam.SAM.from_checkpoint(hf_folder, mask_decoder_num_heads=4)


def test_folder_without_weights_or_config(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no model.safetensors"):
        keras_sam.SAM.from_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="neither a Hugging Face"):
        keras_sam.SAM.from_checkpoint(folder)


def _same_weights(a, b):
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(helpers.to_numpy(x), helpers.to_numpy(y))


def test_info_names_the_format_and_convert_writes_official(
    hf_folder, tmp_path, capsys
):
    from keras_sam import cli

    for path, assumed in (
        (hf_folder, {}),
        (hf_folder / "model.safetensors", {"mask_decoder.num_heads": 8}),
    ):
        assert cli.main(["info", str(path)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["format"], info["assumed"]) == ("huggingface", assumed)
        assert info["tensors"] == 174  # the official names: the tie undone
    out = tmp_path / "official.safetensors"
    assert cli.main(["convert", str(hf_folder), "-o", str(out)]) == 0
    # The official layout cannot record the decoder's 2 heads: said so.
    assert "mask_decoder_num_heads=2" in capsys.readouterr().err
    assert cli.main(["info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "official"
    _same_weights(
        keras_sam.SAM.from_checkpoint(hf_folder),
        keras_sam.SAM.from_checkpoint(out, mask_decoder_num_heads=2),
    )
    with pytest.raises(SystemExit):
        cli.main(["convert", str(hf_folder), "-o", str(hf_folder / "x.pth")])
    with pytest.raises(SystemExit):
        cli.main(
            [
                "convert",
                str(hf_folder),
                "-o",
                str(hf_folder / "x.safetensors"),
            ]
        )
    assert "inside the input CHECKPOINT folder" in capsys.readouterr().err
    assert not (hf_folder / "x.safetensors").exists()
