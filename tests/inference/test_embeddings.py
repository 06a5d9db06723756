"""Image embeddings kept on disk: the file, its identity checks, reuse by the
predictor and the automatic mask generator."""

import json
import os
import re
import zipfile

import keras
import numpy as np
import pytest

from keras_sam.inference import embeddings
from keras_sam.inference.automatic_mask_generator import (
    SAMAutomaticMaskGenerator,
)
from keras_sam.inference.predictor import SAMPredictor
from keras_sam.models.sam import SAM
from support.fixtures import DECODER
from support.fixtures import ENCODER
from support.fixtures import PROMPT
from support.fixtures import smooth_image

CLICK = dict(point_coords=np.array([[70.0, 40.0]]), point_labels=np.array([1]))


def _model(seed: int = 0, name: str = "sam") -> SAM:
    keras.utils.set_random_seed(seed)
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER, name=name)
    model.build()
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def image():
    return smooth_image((90, 120, 3), seed=3)


@pytest.fixture
def stored(model, image, tmp_path):
    path = tmp_path / "photo.png.embedding.npz"
    embeddings.save_embedding(path, SAMPredictor(model), image)
    return path


def test_round_trip_gives_the_same_masks_exactly(model, image, tmp_path):
    encoded = SAMPredictor(model)
    encoded.set_image(image)
    expected = encoded.predict(**CLICK)

    path = tmp_path / "photo.png.embedding.npz"
    predictor = SAMPredictor(model)
    saved = embeddings.save_embedding(path, predictor, image)
    assert predictor.is_image_set  # ready to predict on it
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left
    # Plain .npy members only: nothing that needs pickle to load.
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"{key}.npy"
            for key in (
                "format",
                "embedding",
                "original_size",
                "input_size",
                "image_size",
                "model_fingerprint",
                "image_digest",
            )
        )
    with np.load(path, allow_pickle=False) as data:
        assert str(data["format"]) == embeddings.FORMAT
        np.testing.assert_array_equal(
            data["embedding"], encoded.get_image_embedding()
        )
        assert data["embedding"].dtype == np.float32
        assert data["original_size"].tolist() == [90, 120]
        assert data["input_size"].tolist() == list(encoded.input_size)
        assert data["image_size"].tolist() == [256, 256]
        assert str(data["model_fingerprint"]) == embeddings.model_fingerprint(
            model
        )
        assert str(data["image_digest"]) == embeddings.image_digest(image)

    loaded = embeddings.load_embedding(path, model=model, image=image)
    assert loaded.path == str(path)
    np.testing.assert_array_equal(loaded.embedding, saved.embedding)
    for key in ("original_size", "input_size", "image_size"):
        assert getattr(loaded, key) == getattr(saved, key)
    assert loaded.model_fingerprint == saved.model_fingerprint
    assert loaded.image_digest == saved.image_digest

    reused = SAMPredictor(model)
    embeddings.use_stored_embedding(reused, path, image)
    for got, want in zip(reused.predict(**CLICK), expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_the_generator_reuses_the_whole_picture_embedding(
    model, image, crop_n_layers
):
    generator = SAMAutomaticMaskGenerator(
        model,
        points_per_side=4,
        pred_iou_thresh=-100.0,
        stability_score_thresh=0.0,
        crop_n_layers=crop_n_layers,
    )
    encodes = []
    set_image = generator.predictor.set_image

    def counted(crop, *args, **kwargs):
        encodes.append(crop.shape)
        return set_image(crop, *args, **kwargs)

    generator.predictor.set_image = counted
    expected = generator.generate(image)
    crops = len(encodes)
    assert crops == 1 + 4 * crop_n_layers
    predictor = SAMPredictor(model)
    predictor.set_image(image)
    embedding = predictor.get_image_embedding()

    encodes.clear()
    records = generator.generate(image, image_embedding=embedding)
    # the whole picture is not encoded again; the smaller crops are
    assert len(encodes) == crops - 1
    assert image.shape not in encodes
    assert json.dumps(records, default=np.ndarray.tolist) == json.dumps(
        expected, default=np.ndarray.tolist
    )

    with pytest.raises(ValueError, match="embedding"):
        generator.generate(image, image_embedding=embedding[:, :4])


def test_another_model_or_picture_is_refused(model, image, stored):
    other_model = _model(seed=1)
    other_image = smooth_image((90, 120, 3), seed=4)
    name = re.escape(str(stored))
    with pytest.raises(ValueError, match=f"{name} .*another model") as e:
        embeddings.load_embedding(stored, model=other_model)
    assert "another picture" not in str(e.value)
    with pytest.raises(ValueError, match=f"{name} .*another picture") as e:
        embeddings.load_embedding(stored, image=other_image)
    assert "another model" not in str(e.value)
    with pytest.raises(ValueError, match="another model .* and of another"):
        embeddings.load_embedding(
            stored,
            model=embeddings.model_fingerprint(other_model),
            image=other_image,
        )
    # the same pixels in another shape are another picture
    with pytest.raises(ValueError, match="another picture"):
        embeddings.load_embedding(stored, image=image.reshape(120, 90, 3))
    with pytest.raises(ValueError, match="fingerprint"):
        embeddings.load_embedding(stored, model="not a fingerprint")

    predictor = SAMPredictor(other_model)
    with pytest.raises(ValueError, match=name):
        embeddings.use_stored_embedding(predictor, stored, image)
    assert not predictor.is_image_set


def test_the_fingerprint_covers_architecture_and_weights(model):
    fingerprint = embeddings.model_fingerprint(model)
    assert re.fullmatch("[0-9a-f]{64}", fingerprint)
    # the same weights under another name, frozen: the same model
    twin = _model(seed=0, name="twin")
    twin.image_encoder.trainable = False
    assert embeddings.model_fingerprint(twin) == fingerprint
    # one weight changed
    variable = twin.mask_decoder.weights[0]
    variable.assign(keras.ops.convert_to_numpy(variable) + 1e-6)
    assert embeddings.model_fingerprint(twin) != fingerprint
    # the same weights, another architecture (layer norm epsilon)
    keras.utils.set_random_seed(0)
    other = SAM.from_config_dicts(
        dict(ENCODER, layer_norm_epsilon=1e-5), PROMPT, DECODER
    )
    other.build()
    other.set_weights(model.get_weights())
    assert embeddings.model_fingerprint(other) != fingerprint


def test_the_image_digest_covers_pixels_and_shape(image):
    digest = embeddings.image_digest(image)
    assert embeddings.image_digest(image.copy()) == digest
    assert embeddings.image_digest(image[:, ::-1]) != digest
    assert embeddings.image_digest(image.reshape(120, 90, 3)) != digest
    with pytest.raises(ValueError, match="uint8"):
        embeddings.image_digest(image.astype(np.float32))


_UNPICKLED = []


class _Payload:
    """Unpickling it would record that code ran."""

    def __reduce__(self):
        return (_UNPICKLED.append, ("code ran",))


def _rewrite(source, target, **changes):
    with np.load(source, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    with open(target, "wb") as f:
        np.savez(f, **arrays)


def test_damaged_or_foreign_files_give_a_value_error_naming_them(
    stored, tmp_path
):
    data = stored.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"not an embedding\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "single.npy", np.zeros((1, 16, 16, 32), np.float32))
    bad = {
        "pickled": dict(embedding=np.array([_Payload()], dtype=object)),
        "no_digest": dict(image_digest=None),
        "old_format": dict(format=np.array("keras-sam image embedding 0")),
        "nan": dict(embedding=np.full((1, 16, 16, 32), np.nan, np.float32)),
        "float64": dict(embedding=np.zeros((1, 16, 16, 32))),
        "sizes": dict(original_size=np.array([0, 120])),
        "digest": dict(image_digest=np.array("abc")),
    }
    for name, changes in bad.items():
        _rewrite(stored, tmp_path / name, **changes)
    names = [*cases, "single.npy", *bad, "missing"]
    for name in names:
        path = tmp_path / name
        with pytest.raises(ValueError, match=re.escape(str(path))):
            embeddings.load_embedding(path)
    assert _UNPICKLED == []
    for name, reason in [("truncated", "truncated"), ("pickled", "pickled")]:
        with pytest.raises(ValueError, match=reason):
            embeddings.load_embedding(tmp_path / name)


def test_find_embedding_takes_the_file_for_this_picture_and_model(
    model, image, stored, tmp_path
):
    folder = tmp_path / "emb"
    picture = str(tmp_path / "photos" / "q" / "x.png")
    candidates = embeddings.candidate_paths(folder, picture)
    parts = picture.strip(os.sep).split(os.sep)
    assert candidates[0] == os.path.join(folder, *parts) + embeddings.SUFFIX
    assert candidates[-2:] == [
        os.path.join(folder, "q", "x.png.embedding.npz"),
        os.path.join(folder, "x.png.embedding.npz"),
    ]
    fingerprint = embeddings.model_fingerprint(model)
    find = embeddings.find_embedding
    assert find(folder, picture, image, model=fingerprint) is None

    # x.png of another folder, and this one's under q/
    other = smooth_image((90, 120, 3), seed=5)
    folder.mkdir()
    embeddings.save_embedding(candidates[-1], SAMPredictor(model), other)
    with pytest.raises(ValueError, match="x.png.embedding.npz .*picture"):
        find(folder, picture, image, model=fingerprint)
    (folder / "q").mkdir()
    os.replace(stored, candidates[-2])
    found = find(folder, picture, image, model=fingerprint)
    assert found.path == candidates[-2]
    # another model: the most specific file's error
    with pytest.raises(ValueError, match=r"q.x\.png\.embedding\.npz .*model"):
        find(folder, picture, image, model=_model(seed=1))
