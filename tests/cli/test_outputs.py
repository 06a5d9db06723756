"""What the commands write: never over an input, one result per input,
the umask, leftovers, Ctrl-C, all-or-none, files that load back."""

import errno
import json
import os
import signal
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import fixtures as tp
from tests.cli.helpers import assert_fails
from tests.cli.helpers import messages
from tests.cli.helpers import run
from tests.cli.helpers import snapshot
from tests.cli.helpers import start

pytestmark = pytest.mark.integration

# The bundled model, a few points, thresholds that keep masks.
AUTO = [
    "--preset",
    "sam_shapes",
    "--points-per-side",
    "2",
    "--pred-iou-thresh",
    "-100",
    "--stability-score-thresh",
    "0",
    "--stability-score-offset",
    "0.1",
]


def picture(path: Path, seed: int, shape=(48, 64, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tp.smooth_image(shape, seed=seed)).save(path)
    return path


def test_auto_mirrors_the_inputs_and_never_touches_them(tmp_path):
    photos, more, out = tmp_path / "photos", tmp_path / "more", tmp_path / "out"
    for seed, name in enumerate(
        ["a.jpg", "a.png", "anim.gif", ".hidden.png", "sub/x.png"]
    ):
        picture(photos / name, seed)
    picture(more / "x.png", 9)  # the same name as photos/sub/x.png
    (photos / "notes.txt").write_text("not a picture")
    # A temporary file of a killed run (no process 99999999) and a user's
    # file that merely ends in .part.
    leftover = out / "photos" / ".a.png.json.99999999.abcdefgh.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{")
    (out / "keep.part").write_text("yours")
    inputs = snapshot(photos, more)

    # -o equal to an input folder is refused before anything is written.
    for target in (photos, f"{photos}/."):
        refused = run("auto", photos, "-o", target, *AUTO)
        assert_fails(refused, 2, "-o/--output", "input folder")
    assert snapshot(photos, more) == inputs

    result = run("auto", photos, more, "--recursive", "-o", out, *AUTO, umask=2)
    assert result.returncode == 0, result.stderr
    stems = ["photos/a.jpg", "photos/a.png", "photos/anim.gif"]
    stems += ["photos/sub/x.png", "more/x.png"]
    written = sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
    )
    assert written == sorted(
        [s + ".json" for s in stems]
        + [s + ".overlay.png" for s in stems]
        + ["keep.part"]
    )
    for stem in stems:
        document = json.loads((out / (stem + ".json")).read_text())
        assert document["images"][0]["file_name"] == str(tmp_path / stem)
        for suffix in (".json", ".overlay.png"):
            mode = stat.S_IMODE((out / (stem + suffix)).stat().st_mode)
            assert mode == 0o664, (stem, oct(mode))  # umask 002
    # in the order of the inputs, a folder's files before its subfolders'
    assert result.stdout.split() == [str(out / (s + ".json")) for s in stems]
    lines = messages(result.stderr)
    skipped = [line for line in lines if "skipped" in line]
    assert len(skipped) == 1, lines
    assert "notes.txt" in skipped[0] and ".hidden.png" in skipped[0]
    assert "sub" not in skipped[0]
    assert any("removed 1 temporary file" in line for line in lines), lines
    assert snapshot(photos, more) == inputs

    # Again without --recursive: nothing to do, and it says why.
    again = run("auto", photos, more, "-o", out, *AUTO)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert f"subfolder without --recursive: {photos / 'sub'}" in again.stderr
    assert "skipped 4 picture(s) already done" in again.stderr
    assert "loading model" not in again.stderr
    assert snapshot(photos, more) == inputs


def test_ctrl_c_exits_130_and_leaves_only_complete_files(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    count = 12
    for i in range(count):
        picture(folder / f"p{i:02d}.png", i, shape=(96, 128, 3))
    process = start(
        "auto", folder, "-o", out, "--preset", "sam_shapes",
        "--points-per-side", "8",
    )  # fmt: skip
    lines, second = [], threading.Event()

    def read():
        for line in process.stderr:
            lines.append(line)
            if f"[2/{count}]" in line:
                second.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert second.wait(240), "".join(lines)
        process.send_signal(signal.SIGINT)
        assert process.wait(120) == 130, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(10)
    process.stderr.close()
    stderr = "".join(lines)
    assert "Traceback" not in stderr, stderr
    assert messages(stderr)[-1] == "keras-sam: interrupted"
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".") or ".part" in n], names
    done = [n[: -len(".json")] for n in names if n.endswith(".json")]
    assert 1 <= len(done) < count, names
    assert sorted(names) == sorted(
        [d + ".json" for d in done] + [d + ".overlay.png" for d in done]
    )
    for name in done:
        json.loads((out / (name + ".json")).read_text())
        with Image.open(out / (name + ".overlay.png")) as im:
            im.load()


def test_segment_writes_all_its_files_or_none(tmp_path):
    # noise: its overlay does not compress below the limit further down
    noise = np.random.default_rng(0).integers(0, 256, (64, 80, 3), np.uint8)
    image = tmp_path / "photo.png"
    Image.fromarray(noise).save(image)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("mask_0.png", "overlay.png", "result.json"):
        (out / name).write_bytes(b"an earlier run's " + name.encode())
    before = snapshot(out)
    # Files over 4 KiB cannot be written (as on a full disk): the masks
    # can, the overlay cannot.
    result = run(
        "segment", image, "--point", "40,30", "--preset", "sam_shapes",
        "-o", out, fsize=4096,
    )  # fmt: skip
    assert_fails(result, 1, "overlay.png", "cannot write")
    assert result.stdout == ""
    assert snapshot(out) == before  # nothing new, no temporary file


# In-process: the checkpoint conversions and the choice of masks.


@pytest.fixture
def command(monkeypatch, capsys):
    """`keras-sam ARGS` in this process: (exit status, stdout, stderr)."""
    from keras_sam.cli import main

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")

    def call(*args):
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return call


def test_every_file_convert_writes_loads_back(
    tiny_checkpoint, tmp_path, command
):
    from keras_sam.inference.predictor import SAMPredictor
    from keras_sam.models.sam import SAM

    converted = tmp_path / "converted"
    converted.mkdir()
    umask = os.umask(0o027)
    try:
        for suffix in (".safetensors", ".weights.h5"):
            status, out, err = command(
                "convert", tiny_checkpoint, "-o", converted / f"tiny{suffix}"
            )
            assert status == 0, err
    finally:
        os.umask(umask)
    files = sorted(converted.iterdir())
    assert [p.name for p in files] == ["tiny.safetensors", "tiny.weights.h5"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640

    image = picture(tmp_path / "photo.png", 3, shape=(120, 160, 3))
    predictor = SAMPredictor(SAM.from_checkpoint(tiny_checkpoint))
    predictor.set_image(np.asarray(Image.open(image).convert("RGB")))
    click = dict(point_coords=np.array([[80.0, 60.0]]), point_labels=[1])
    three, scores, _ = predictor.predict(**click, multimask_output=True)
    single, _, _ = predictor.predict(**click, multimask_output=False)

    def segment(checkpoint, *flags):
        folder = tmp_path / "seg"
        status, out, err = command(
            "segment", image, "--point", "80,60", "--checkpoint", checkpoint,
            "-o", folder, *flags,
        )  # fmt: skip
        assert status == 0, err
        result = json.loads(out)
        masks = [
            np.asarray(Image.open(entry["file"])) > 127
            for entry in result["masks"]
        ]
        return result, masks, sorted(p.name for p in folder.iterdir())

    # One click: the best-scored of the three masks, by default.
    result, masks, names = segment(converted / "tiny.weights.h5")
    assert result["mask_choice"] == "best of three"
    np.testing.assert_array_equal(masks[0], three[np.argmax(scores)])
    assert names == ["mask_0.png", "overlay.png", "result.json"]
    # All three, into the same folder.
    result, masks, names = segment(
        converted / "tiny.safetensors", "--multimask"
    )
    assert result["mask_choice"] == "all three"
    for mask, expected in zip(masks, three, strict=True):
        np.testing.assert_array_equal(mask, expected)
    assert len(names) == 5
    # SAM's single mask: the earlier run's mask_1 and mask_2 are gone.
    result, masks, names = segment(
        converted / "tiny.safetensors", "--single-mask-output"
    )
    assert result["mask_choice"] == "single" and len(masks) == 1
    np.testing.assert_array_equal(masks[0], single[0])
    assert names == ["mask_0.png", "overlay.png", "result.json"]


def test_a_failed_convert_leaves_no_file(
    tiny_checkpoint, tmp_path, command, monkeypatch
):
    from keras_sam.models.sam import SAM

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SAM, "save_weights", full_disk)
    status, out, err = command(
        "convert", tiny_checkpoint, "-o", tmp_path / "x.weights.h5"
    )
    assert status == 1 and out == ""
    assert "Traceback" not in err
    (line,) = [m for m in messages(err) if "error" in m]
    assert "x.weights.h5" in line and "No space left on device" in line
    assert list(tmp_path.iterdir()) == []
