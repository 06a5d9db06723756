"""Picture reading and atomic output writing (`keras_sam.io`)."""

import json

import numpy as np
import pytest
from PIL import Image

from keras_sam import io


def test_write_png_round_trip_leaves_no_temporary_file(tmp_path):
    picture = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    path = tmp_path / "o.png"
    io.write_png(picture, path)
    np.testing.assert_array_equal(io.read_image(path), picture)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "o.json"
    io.write_json({"a": 1}, path)
    with pytest.raises(TypeError):
        io.write_json({"a": object()}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


def test_jsonable_converts_numpy_values():
    value = {"a": np.arange(3), "b": (np.float32(0.5), [np.int64(2)])}
    assert io.jsonable(value) == {"a": [0, 1, 2], "b": [0.5, [2]]}


def test_read_image_converts_to_rgb_and_refuses_non_pictures(tmp_path):
    Image.new("L", (5, 3), 7).save(tmp_path / "g.png")
    image = io.read_image(tmp_path / "g.png")
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8
    (tmp_path / "t.png").write_text("not a picture")
    with pytest.raises(ValueError, match="cannot read"):
        io.read_image(tmp_path / "t.png")


def test_collect_images_lists_folders_in_order(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = io.collect_images([str(tmp_path)])
    assert [p.rsplit("/", 1)[1] for p in found] == ["a.jpg", "b.png"]
    with pytest.raises(ValueError, match="no such file"):
        io.collect_images([str(tmp_path / "missing")])
