"""KerasHub SAM presets: loading without keras-hub, parity, errors."""

import json
import shutil
import sys

import h5py
import numpy as np
import pytest

import keras_sam
from keras_sam.convert import formats
from keras_sam.convert import h5_weights
from keras_sam.convert import keras_hub_mapping
from keras_sam.convert import torch_mapping
from support.reference import kerashub
from tests import helpers

# keras-hub's SAM runs eagerly op by op: cheap on TensorFlow and PyTorch,
# minutes on JAX. Reading a preset is NumPy alone; our layers' numerics
# are checked on every backend by their own tests: one backend suffices.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """The backbone's parts, and the preset saved whole and sharded."""
    backbone = kerashub.make_backbone(seed=0)
    root = tmp_path_factory.mktemp("keras_hub")
    backbone.save_to_preset(root / "whole")
    # Small shards: the tiny model's layers spread over several files.
    backbone.save_to_preset(root / "sharded", max_shard_size=0.00002)
    parts = (
        backbone.image_encoder,
        backbone.prompt_encoder,
        backbone.mask_decoder,
    )
    return parts, root / "whole", root / "sharded"


def _copy(folder, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def test_preset_outputs_equal_keras_hub(presets):
    (encoder, prompt_encoder, mask_decoder), whole, _ = presets
    model = keras_sam.SAM.from_checkpoint(whole)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(size=(1, 64, 64, 3)).astype("float32")
    reference = kerashub.to_numpy(encoder(pixels))
    # keras-hub normalises inside its encoder, keras-sam before it.
    normalised = (pixels - kerashub.IMAGENET_MEAN) / kerashub.IMAGENET_STD
    embeddings = helpers.to_numpy(model.encode_image(normalised))
    helpers.assert_close(
        embeddings, reference, helpers.SAME_BACKEND_RTOL, "embeddings"
    )
    prompts = dict(
        points=rng.uniform(0, 64, (1, 3, 2)).astype("float32"),
        labels=np.array([[1, 0, -1]], "float32"),
        boxes=np.array([[[[5, 6], [40, 50]]]], "float32"),
        masks=rng.normal(size=(1, 1, 32, 32, 1)).astype("float32"),
    )
    ref_prompts = prompt_encoder(**prompts)
    ours_prompts = model.prompt_encoder(**prompts)
    for key, value in ref_prompts.items():
        helpers.assert_close(
            helpers.to_numpy(ours_prompts[key]),
            kerashub.to_numpy(value),
            helpers.SAME_BACKEND_RTOL,
            key,
        )
    ref = mask_decoder(image_embeddings=reference, **ref_prompts)
    ours = model.mask_decoder(image_embeddings=reference, **ref_prompts)
    for key in ("masks", "iou_pred"):
        helpers.assert_close(
            helpers.to_numpy(ours[key]),
            kerashub.to_numpy(ref[key]),
            helpers.KERAS_HUB_DECODER_RTOL,
            key,
        )


def test_sharded_preset_loads_the_same(presets):
    _, whole, sharded = presets
    assert len(list(sharded.glob("model_*.weights.h5"))) > 1
    a = formats.read_checkpoint(whole)
    b = formats.read_checkpoint(sharded)
    assert a.format == b.format == "keras_hub"
    assert a.config == b.config
    assert a.assumed == {}
    assert sorted(a.state) == sorted(b.state)
    for key in a.state:
        np.testing.assert_array_equal(a.state[key], b.state[key])


def test_loads_without_keras_hub(presets, monkeypatch):
    # Any import of keras_hub now raises ImportError.
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    for name in list(sys.modules):
        if name.startswith("keras_hub."):
            monkeypatch.delitem(sys.modules, name)
    model = keras_sam.SAM.from_checkpoint(presets[1])
    assert model.count_params() > 0


def test_inverse_transforms_are_of_official_transforms():
    assert set(keras_hub_mapping.INVERSE_TRANSFORMS) <= set(
        torch_mapping.TRANSFORMS
    )


@pytest.mark.parametrize("name", sorted(keras_hub_mapping.INVERSE_TRANSFORMS))
def test_inverse_transforms_undo_the_official_ones(name):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype("float32")
    if name == "linear":
        x = x[0, 0]
    forward = torch_mapping.TRANSFORMS[name](x)
    back = keras_hub_mapping.INVERSE_TRANSFORMS[name](forward)
    np.testing.assert_array_equal(back, x)


def test_truncated_weights(presets, tmp_path):
    folder = _copy(presets[1], tmp_path)
    weights = folder / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-4000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        keras_sam.SAM.from_checkpoint(folder)


def test_missing_shard(presets, tmp_path):
    folder = _copy(presets[2], tmp_path)
    sorted(folder.glob("model_*.weights.h5"))[-1].unlink()
    with pytest.raises(FileNotFoundError):
        keras_sam.SAM.from_checkpoint(folder)


def test_extra_and_missing_datasets_listed(presets, tmp_path):
    folder = _copy(presets[1], tmp_path)
    with h5py.File(folder / "model.weights.h5", "a") as f:
        f["layers/stray/vars/0"] = np.ones(3, "float32")
        del f["mask_decoder/iou_token/vars/0"]
    with pytest.raises(ValueError, match="layers/stray/vars/0") as error:
        keras_sam.SAM.from_checkpoint(folder)
    assert "mask_decoder/iou_token/vars/0" in str(error.value)


def test_weights_of_another_architecture(presets, tmp_path):
    folder = _copy(presets[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["image_encoder"]["config"]["intermediate_dim"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatches"):
        keras_sam.SAM.from_checkpoint(folder)


def test_not_a_sam_backbone(presets, tmp_path):
    folder = _copy(presets[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["class_name"] = "ViTDetBackbone"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a SAMBackbone"):
        keras_sam.SAM.from_checkpoint(folder)


def test_heads_argument_disagreeing_with_config(presets):
    with pytest.raises(ValueError, match="mask_decoder_num_heads=8"):
        keras_sam.SAM.from_checkpoint(presets[1], mask_decoder_num_heads=8)


@pytest.mark.parametrize("kind", ["external_link", "compressed", "integer"])
def test_unsafe_h5_refused(tmp_path, kind):
    path = tmp_path / "x.weights.h5"
    with h5py.File(path, "w") as f:
        if kind == "external_link":
            f["layers/a/vars/0"] = h5py.ExternalLink("/etc/passwd", "/x")
        elif kind == "compressed":
            f.create_dataset(
                "layers/a/vars/0",
                data=np.ones(100, "float32"),
                compression="gzip",
            )
        else:
            f["layers/a/vars/0"] = np.ones(3, "int32")
    match = {
        "external_link": "ExternalLink",
        "compressed": "compressed",
        "integer": "floating point",
    }[kind]
    with pytest.raises(ValueError, match=match):
        h5_weights.read_weights_h5(path)


def test_shard_outside_the_folder_refused(tmp_path):
    (tmp_path / "model.weights.json").write_text(
        json.dumps({"weight_map": {"/layers/a/vars": "../x.weights.h5"}})
    )
    with pytest.raises(ValueError, match="not a .weights.h5 file of its"):
        h5_weights.read_sharded_weights(tmp_path / "model.weights.json")


def test_info_names_the_format_and_convert_writes_official(
    presets, tmp_path, capsys
):
    from keras_sam import cli

    _, whole, sharded = presets
    for path in (whole, sharded):
        assert cli.main(["info", str(path)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["format"], info["assumed"]) == ("keras_hub", {})
    out = tmp_path / "official.safetensors"
    assert cli.main(["convert", str(whole), "-o", str(out)]) == 0
    loaded = keras_sam.SAM.from_checkpoint(whole)
    back = keras_sam.SAM.from_checkpoint(
        tmp_path / "official.safetensors", mask_decoder_num_heads=2
    )
    for x, y in zip(loaded.weights, back.weights, strict=True):
        np.testing.assert_array_equal(helpers.to_numpy(x), helpers.to_numpy(y))
