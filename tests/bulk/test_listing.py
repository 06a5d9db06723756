"""Listing pictures through pyarrow filesystems (`file://` here), writing
results to a URI, and the `--ray` usage errors; no Ray cluster."""

import importlib.util
import json
import pathlib

import pytest
from PIL import Image

from keras_sam.bulk import listing
from keras_sam.bulk.outputs import Destination


def picture(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (value, 0, 0)).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    picture(root / "b.png")
    picture(root / "a.JPG")
    picture(root / "sub" / "c.png")
    picture(root / ".hidden" / "d.png")
    picture(root / ".e.png")
    (root / "notes.txt").write_text("not a picture")
    return root


def test_is_uri():
    assert listing.is_uri("s3://bucket/key")
    assert listing.is_uri("file:///tmp/x")
    assert not listing.is_uri("/tmp/x")
    assert not listing.is_uri("C:\\photos")
    assert not listing.is_uri("photos/a://b")


def test_list_pictures_like_the_local_listing(tree):
    uri = f"file://{tree}"
    flat = listing.list_pictures([uri])
    assert flat == [(f"{uri}/a.JPG", "a.JPG"), (f"{uri}/b.png", "b.png")]
    deep = listing.list_pictures([uri], recursive=True)
    assert [name for _, name in deep] == ["a.JPG", "b.png", "sub/c.png"]
    # Names relative to the folder holding every input, as mirrored_names.
    two = listing.list_pictures([f"{uri}/b.png", f"{uri}/sub"])
    assert two == [(f"{uri}/b.png", "b.png"), (f"{uri}/sub/c.png", "sub/c.png")]
    # A picture named twice is listed once.
    assert len(listing.list_pictures([uri, f"{uri}/b.png"])) == 2


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (["file:///no/such/folder"], "no such file or folder"),
        (["nosuchscheme://x/y"], "cannot open nosuchscheme://x/y"),
    ],
)
def test_list_pictures_errors(inputs, match):
    with pytest.raises(ValueError, match=match):
        listing.list_pictures(inputs)


def test_list_pictures_finds_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no pictures found"):
        listing.list_pictures([f"file://{tmp_path}/empty"])


def test_read_picture_from_a_uri_is_the_shared_reader(tree, tmp_path):
    from keras_sam import io

    path = tree / "sub" / "c.png"
    image = listing.read_picture(f"file://{path}")
    assert (image == io.read_image(path)).all()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    with pytest.raises(ValueError, match=f"cannot read file://{broken}"):
        listing.read_picture(f"file://{broken}")


def test_destination_publishes_to_a_uri(tmp_path):
    out = tmp_path / "out"
    destination = Destination(f"file://{out}")
    assert destination.remote and destination.existing() == set()
    with destination.staging() as folder:
        staged = tmp_path / "check"
        staged_file = pathlib.Path(folder) / "sub" / "a.json"
        staged_file.parent.mkdir(parents=True)
        staged_file.write_text(json.dumps({"a": 1}))
        destination.publish(folder, ["sub/a.json"])
    assert not staged.exists()
    assert json.loads((out / "sub" / "a.json").read_text()) == {"a": 1}
    assert destination.existing() == {"sub/a.json"}
    assert destination.read("sub/a.json") == b'{"a": 1}'
    assert destination.read("missing") == b""
    # No temporary file is left beside the result.
    assert sorted(p.name for p in (out / "sub").iterdir()) == ["a.json"]


def test_local_destination_writes_in_place(tmp_path):
    destination = Destination(str(tmp_path))
    with destination.staging() as folder:
        assert folder == str(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "y.json").write_text("{}")
    assert destination.existing() == {"x/y.json"}
    assert destination.uri("x/y.json") == str(tmp_path / "x" / "y.json")


def test_run_bulk_checks_its_arguments():
    from keras_sam.bulk import pipeline

    for kwargs, match in [
        ({"task": "segment"}, "task"),
        ({"task": "auto", "num_actors": 0}, "num_actors"),
        ({"task": "auto", "actor_cpus": -1}, "actor_cpus"),
        ({"task": "auto", "pictures": [("a", "../a")]}, "relative path"),
        ({"task": "auto", "pictures": [("a", "x"), ("b", "x")]}, "'x'"),
    ]:
        with pytest.raises(ValueError, match=match):
            kwargs.setdefault("pictures", [])
            pipeline.run_bulk(output="out", make_model=None, **kwargs)


def test_ray_flag_without_ray_says_how_to_install(
    tmp_path, monkeypatch, capsys
):
    from keras_sam import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ray" else real(name, *a),
    )
    picture(tmp_path / "a.png")
    argv = ["auto", str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--preset", "sam_shapes", "--ray"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert 'install it with pip install "keras-sam[ray]"' in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--embeddings", "emb"], "--embeddings cannot be combined with --ray"),
        (["s3://bucket/x"], "give either URIs or local paths"),
        (["--num-actors", "0"], "--num-actors: must be an integer >= 1"),
        (["--actor-cpus", "-1"], "--actor-cpus: must be a number >= 0"),
    ],
)
def test_ray_usage_errors(tmp_path, capsys, extra, match):
    from keras_sam import cli

    picture(tmp_path / "a.png")
    (tmp_path / "emb").mkdir()
    uris = [e for e in extra if "://" in e]
    flags = [e for e in extra if e not in uris]
    argv = ["auto", str(tmp_path / "a.png"), *uris, "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--preset", "sam_shapes", "--ray", *flags])
    assert exit_.value.code == 2
    assert match in capsys.readouterr().err
