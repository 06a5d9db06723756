"""`keras-sam embed`, and `segment` / `auto --embeddings` reusing its files:
names mirrored as `auto`'s, inputs untouched, failures reported, files
from another backend accepted, files for another picture or model refused."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import fixtures as tp
from tests.cli.helpers import assert_fails
from tests.cli.helpers import call
from tests.cli.helpers import messages
from tests.cli.helpers import run
from tests.cli.helpers import snapshot

pytestmark = pytest.mark.integration

SUFFIX = ".embedding.npz"


def picture(path: Path, seed: int, shape=(48, 64, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tp.smooth_image(shape, seed=seed)).save(path)
    return path


def other_backend() -> str:
    """A backend other than the tests' own, for `embed`: its files must
    serve the commands on this one."""
    import keras

    # TensorFlow unless it is the tests' own: for one command it traces in
    # less time than JAX compiles.
    return "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"


def test_embed_then_segment_and_auto_reuse_the_embeddings(tmp_path):
    from keras_sam import io
    from keras_sam.inference import embeddings
    from keras_sam.inference.predictor import SAMPredictor
    from keras_sam.models.sam import SAM

    photos, more = tmp_path / "photos", tmp_path / "more"
    emb, emb2 = tmp_path / "emb", tmp_path / "emb2"
    a = picture(photos / "a.png", 0)
    b = picture(photos / "sub" / "b.png", 1, shape=(40, 64, 3))
    other_a = picture(more / "a.png", 2)  # the same name as photos/a.png
    broken = photos / "broken.png"
    broken.write_bytes(b"not a picture")
    inputs = snapshot(photos, more)
    model_flags = ["--preset", "sam_shapes"]

    # -o equal to an input folder is refused before anything is written.
    refused = call("embed", photos, "-o", photos, *model_flags)
    assert_fails(refused, 2, "-o/--output", "input folder")
    assert snapshot(photos, more) == inputs

    # On another backend; the unreadable picture is reported, the others
    # are done.
    result = run(
        "--backend", other_backend(), "embed", photos, more, "--recursive",
        "-o", emb, *model_flags, umask=2,
    )  # fmt: skip
    assert_fails(result, 1, str(broken))
    names = ["photos/a.png", "photos/sub/b.png", "more/a.png"]
    files = [emb / (name + SUFFIX) for name in names]
    assert result.stdout.split() == [str(f) for f in files]
    assert sorted(p for p in emb.rglob("*") if p.is_file()) == sorted(files)
    lines = messages(result.stderr)
    progress = [line for line in lines if line.startswith("keras-sam: [")]
    assert progress == [
        f"keras-sam: [{i}/4] {p}"
        for i, p in enumerate([a, broken, b, other_a], start=1)
    ]
    assert snapshot(photos, more) == inputs
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o664  # umask 002
    # What this backend computes for the same model and pictures.
    model = SAM.from_preset("sam_shapes", weights=True)
    fingerprint = embeddings.model_fingerprint(model)
    for path, image_path in zip(files, [a, b, other_a], strict=True):
        image = io.read_image(image_path)
        stored = embeddings.load_embedding(path, model=model, image=image)
        assert stored.original_size == image.shape[:2]
        assert stored.model_fingerprint == fingerprint

    # Again: the pictures done are skipped without loading the model.
    broken.unlink()
    again = call("embed", photos, more, "--recursive", "-o", emb, *model_flags)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert "skipped 3 picture(s) already done" in again.stderr
    assert "loading model" not in again.stderr

    # segment with a stored embedding: no encoding, the masks of that
    # embedding.
    missing = call(
        "segment", a, "--point", "30,20", *model_flags,
        "--embeddings", tmp_path / "nowhere", "-o", tmp_path / "seg",
    )  # fmt: skip
    assert_fails(missing, 2, "--embeddings", "no such folder")
    seg = call(
        "segment", a, "--point", "30,20", *model_flags,
        "--embeddings", emb, "-o", tmp_path / "seg",
    )  # fmt: skip
    assert seg.returncode == 0, seg.stderr
    lines = messages(seg.stderr)
    assert f"keras-sam: using the stored embedding {files[0]}" in lines, lines
    assert not [line for line in lines if "encoding" in line], lines
    predictor = SAMPredictor(model)
    embeddings.use_stored_embedding(
        predictor, files[0], io.read_image(a), fingerprint=fingerprint
    )
    masks, scores, _ = predictor.predict(
        point_coords=np.array([[30.0, 20.0]]), point_labels=np.array([1])
    )
    (entry,) = json.loads(seg.stdout)["masks"]
    written = np.asarray(Image.open(entry["file"])) > 127
    np.testing.assert_array_equal(written, masks[np.argmax(scores)])

    # auto: photos/a.png's is used, sub/b.png's is of another picture,
    # more/a.png's of another model, c.png has none (encoded).
    c = picture(photos / "c.png", 3)
    (emb2 / "photos" / "sub").mkdir(parents=True)
    (emb2 / "more").mkdir()
    os.link(files[0], emb2 / "photos" / ("a.png" + SUFFIX))
    os.link(files[2], emb2 / "photos" / "sub" / ("b.png" + SUFFIX))
    with np.load(files[2], allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["model_fingerprint"] = np.array("0" * 64)
    np.savez(emb2 / "more" / ("a.png" + SUFFIX), **arrays)
    out = tmp_path / "out"
    result = call(
        "auto", photos, more, "--recursive", "--embeddings", emb2, "-o", out,
        *model_flags, "--points-per-side", "2", "--pred-iou-thresh", "-100",
        "--stability-score-thresh", "0",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = messages(result.stderr)
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 2, lines
    held = "holds the image embedding of another"
    assert f"b.png{SUFFIX} {held} picture" in errors[0]
    assert f"more/a.png{SUFFIX} {held} model" in errors[1]
    encoding = f"keras-sam: no stored embedding for {c} in {emb2}; encoding it"
    assert encoding in lines
    assert "keras-sam: used 1 stored embedding(s) from" in "\n".join(lines)
    assert "2 of 4 pictures failed" in lines[-1]
    done = sorted(str(p.relative_to(out)) for p in out.rglob("*.json"))
    assert done == ["photos/a.png.json", "photos/c.png.json"]
