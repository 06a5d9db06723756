"""Bulk runs on a local Ray cluster of 2 CPUs with the bundled model: the
same files as the single-machine commands, an actor killed mid-run, a bad
picture recorded while the others finish, a rerun that skips everything.

Each run starts actors that import Keras and load the model (~10 s on 2
cores), so the checks share few runs."""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bulk import helpers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = {
    "points_per_side": 2,
    "pred_iou_thresh": -100.0,
    "stability_score_thresh": 0.0,
    "stability_score_offset": 0.1,
}
AUTO_FLAGS = [
    "--preset", "sam_shapes", "--points-per-side", "2",
    "--pred-iou-thresh", "-100", "--stability-score-thresh", "0",
    "--stability-score-offset", "0.1",
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module, its logs in a
    temporary folder; the workers import this repository's tests."""
    from keras_sam.bulk import pipeline

    # Short: Ray's socket paths below it must stay under 108 bytes.
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    path = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    started = pipeline.connect(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=folder,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    assert started
    yield
    pipeline.disconnect()
    shutil.rmtree(folder, ignore_errors=True)


def pictures(folder: Path, count: int, size=(64, 80)) -> list[Path]:
    from keras_sam.training.datasets import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, _ = make_scene(i, image_size=size)
        path = folder / f"p{i:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_auto_on_ray_survives_a_killed_actor_and_matches_auto(
    cluster, tmp_path, capsys
):
    from keras_sam import cli
    from keras_sam.bulk import pipeline

    photos, out = tmp_path / "photos", tmp_path / "out"
    good = pictures(photos, 10)
    bad = photos / "bad.png"
    bad.write_bytes(b"not a picture")
    out.mkdir()
    flag = tmp_path / "killed"
    listed = [(str(p), p.name) for p in sorted(photos.iterdir())]

    summary = pipeline.run_bulk(
        listed,
        str(out),
        task="auto",
        make_model=helpers.KillOnce(str(out), str(flag)),
        generator_args=GENERATOR,
        num_actors=2,
    )

    # One actor was killed after results began to appear; Ray restarted
    # it and the job finished.
    killed, when = flag.read_text().split(" ", 1)
    killed = int(killed)
    # capsys holds stdout: tell the person running with -s which it was
    print(f"actor {killed} killed {when}", file=sys.__stderr__)
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    assert summary.pictures == 11 and summary.skipped == 0
    assert summary.done == 10
    assert [p for p, _ in summary.failed] == [str(bad)]
    assert "cannot read" in summary.failed[0][1]
    assert summary.masks > 0 and summary.seconds > 0
    assert "10 done, 1 failed" in summary.line()

    # Every picture's two files once, no temporary files left over.
    names = sorted(p.name for p in out.iterdir())
    expected = sorted(
        [p.name + ".json" for p in good]
        + [p.name + ".overlay.png" for p in good]
        + [pipeline.MANIFEST]
    )
    assert names == expected
    lines = (out / pipeline.MANIFEST).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["name"] for r in records) == sorted(n for _, n in listed)
    by_name = {r["name"]: r for r in records}
    assert by_name["bad.png"]["status"] == "failed"
    assert "cannot read" in by_name["bad.png"]["error"]
    assert sum(r["masks"] for r in records) == summary.masks

    # The single-machine command writes the same bytes.
    single = tmp_path / "single"
    status = cli.main(["auto", *map(str, good), "-o", str(single), *AUTO_FLAGS])
    assert status == 0
    capsys.readouterr()
    ray_files = files(out)
    del ray_files[pipeline.MANIFEST]
    assert ray_files == files(single)
    for p in good:
        document = json.loads((out / f"{p.name}.json").read_text())
        assert document["images"][0]["file_name"] == str(p)
        assert by_name[p.name]["masks"] == len(document["annotations"])

    # A rerun skips every picture done (the bad one removed) and starts
    # no job; nothing changes.
    bad.unlink()
    before = files(out)
    again = pipeline.run_bulk(
        [(p, n) for p, n in listed if n != "bad.png"],
        str(out),
        task="auto",
        make_model=helpers.bundled_model,
        generator_args=GENERATOR,
    )
    assert (again.skipped, again.done, again.failed) == (10, 0, [])
    assert files(out) == before


def test_embed_with_ray_flag_writes_what_embed_writes(
    cluster, tmp_path, capsys
):
    from keras_sam import cli
    from keras_sam.inference import embeddings

    photos = tmp_path / "photos"
    pictures(photos, 2)
    pictures(photos / "sub", 1, size=(48, 64))
    out, single = tmp_path / "out", tmp_path / "single"
    argv = ["embed", str(photos), "-r", "--preset", "sam_shapes"]
    assert cli.main([*argv, "-o", str(out), "--ray"]) == 0
    captured = capsys.readouterr()
    assert "3 picture(s): 3 done, 0 failed" in captured.err
    assert cli.main([*argv, "-o", str(single)]) == 0
    capsys.readouterr()
    names = sorted(n for n in files(single))
    assert names == ["p00.png.embedding.npz", "p01.png.embedding.npz",
                     "sub/p00.png.embedding.npz"]  # fmt: skip
    # stdout: each file written, as without --ray
    printed = [x for x in captured.out.splitlines() if x.endswith(".npz")]
    assert sorted(printed) == [str(out / n) for n in names]
    for name in names:
        ours = embeddings.load_embedding(out / name)
        theirs = embeddings.load_embedding(single / name)
        np.testing.assert_array_equal(ours.embedding, theirs.embedding)
        assert ours.image_digest == theirs.image_digest
        assert ours.model_fingerprint == theirs.model_fingerprint
    # Run again: everything is skipped.
    assert cli.main([*argv, "-o", str(out), "--ray"]) == 0
    assert "skipped 3 picture(s) already done" in capsys.readouterr().err
