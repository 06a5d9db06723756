"""The `keras-sam` console script, run for real in a subprocess; what a
command computes and writes, through its `main` in the test's process
(`call`: the same code without the frameworks' import for each)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from keras_sam.inference.predictor import SAMPredictor
from keras_sam.models.sam import SAM
from support import fixtures as tp
from support.reference import official
from tests.cli.helpers import call
from tests.cli.helpers import run

# End to end; `make test` runs it on one backend (see the Makefile).
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ref = official.make_sam(
        tp.ENCODER, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2
    )
    checkpoint = root / "tiny.pth"
    torch.save(ref.state_dict(), checkpoint)
    image = tp.smooth_image()
    image_path = root / "photo.png"
    Image.fromarray(image).save(image_path)
    return {"root": root, "checkpoint": checkpoint, "image": image_path}


def test_segment_writes_masks_overlay_and_json(files):
    out = files["root"] / "seg"
    result = call(
        "segment",
        files["image"],
        "--point",
        "320,200",
        "--point",
        "100,400,0",
        "--box",
        "120,80,500,420",
        "--checkpoint",
        files["checkpoint"],
        "--multimask",
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "result.json").read_text())
    assert len(summary["masks"]) == 3
    with Image.open(out / "overlay.png") as im:  # image + legend panel
        assert im.size[0] > 640 and im.size[1] == 480 and im.mode == "RGB"
    # The PNG masks are the predictor's masks.
    model = SAM.from_checkpoint(files["checkpoint"])
    predictor = SAMPredictor(model)
    predictor.set_image(np.asarray(Image.open(files["image"]).convert("RGB")))
    masks, scores, _ = predictor.predict(
        point_coords=np.array([[320.0, 200.0], [100.0, 400.0]]),
        point_labels=np.array([1, 0]),
        box=np.array([120.0, 80.0, 500.0, 420.0]),
    )
    for i, entry in enumerate(summary["masks"]):
        png = np.asarray(Image.open(entry["file"])) > 127
        np.testing.assert_array_equal(png, masks[i])
        assert entry["score"] == pytest.approx(float(scores[i]), rel=1e-5)


@pytest.mark.parametrize(
    "args,flag",
    [
        (["segment", "{root}/nope.png", "--point", "1,1"], "IMAGE"),
        (["segment", "{root}/notes.png", "--point", "1,1"], "IMAGE"),
        (["segment", "{image}", "--point", "1;2"], "--point"),
        (["segment", "{image}", "--point", "1,2,5"], "--point"),
        (["segment", "{image}", "--point", "9000,2"], "--point"),
        (["segment", "{image}", "--box", "50,50,10,10"], "--box"),
        (
            ["segment", "{image}", "--point", "1,1", "--preset", "sam_x"],
            "--preset",
        ),
        (
            [
                "segment",
                "{image}",
                "--point",
                "1,1",
                "--checkpoint",
                "{root}/no.pth",
            ],
            "--checkpoint",
        ),
        (["segment", "{image}"], "--point"),
        (["convert", "{checkpoint}", "-o", "{root}/out.bin"], "--output"),
        (["info", "{root}/missing.pth"], "CHECKPOINT"),
    ],
)
def test_bad_usage_exits_2_naming_the_flag(files, args, flag):
    (files["root"] / "notes.png").write_text("not an image")
    values = {k: str(v) for k, v in files.items()}
    argv = [a.format(**values) for a in args]
    if argv[0] == "segment" and "-o" not in argv:
        argv += ["-o", str(files["root"] / "bad")]
    if argv[0] == "segment" and not {"--checkpoint", "--preset"} & set(argv):
        argv += ["--checkpoint", str(files["checkpoint"])]
    result = run(*argv)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr
    assert result.stdout == ""


def test_info_reads_a_checkpoint_without_keras(files, tmp_path):
    # No backend started: `info` on a .pth and on our safetensors.
    out = tmp_path / "tiny.safetensors"
    assert run("convert", files["checkpoint"], "-o", out).returncode == 0
    code = (
        "import sys\n"
        "from keras_sam.cli import main\n"
        "for path in sys.argv[1:]:\n"
        "    assert main(['info', path]) == 0\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(files["checkpoint"]), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_convert_and_info(files, tmp_path):
    out = tmp_path / "tiny.safetensors"
    result = call("convert", files["checkpoint"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    info = call("info", out)
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["tensors"] == len(torch.load(files["checkpoint"]))
    assert data["architecture"]["image_encoder"]["hidden_size"] == 64
    assert data["preset"] is None
    h5 = tmp_path / "tiny.weights.h5"
    result = call("convert", files["checkpoint"], "-o", h5)
    assert result.returncode == 0, result.stderr
    expected = SAM.from_checkpoint(files["checkpoint"])
    model = SAM.from_config_dicts(
        tp.ENCODER, tp.PROMPT, dict(tp.DECODER, num_heads=8)
    )
    model.build()
    model.load_weights(h5)
    for a, b in zip(expected.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_malicious_checkpoint_is_refused(files, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "evil": Evil()}, path)
    result = run("info", path)
    assert result.returncode == 1
    assert "weights_only" in result.stderr
    assert not marker.exists()


AUTO_FLAGS = [
    "--points-per-side",
    "4",
    "--pred-iou-thresh",
    "-100",
    "--stability-score-thresh",
    "0",
    "--stability-score-offset",
    "0.1",
]


def test_auto_writes_coco_rle_json_and_overlay(files, tmp_path):
    from pycocotools import mask as mask_utils

    from keras_sam.inference.automatic_mask_generator import (
        SAMAutomaticMaskGenerator,
    )

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(tp.smooth_image((120, 160, 3), seed=1)).save(
        folder / "a.png"
    )
    Image.fromarray(tp.smooth_image((100, 90, 3), seed=2)).save(
        folder / "b.jpg"
    )
    (folder / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"
    argv = ["auto", folder, "--checkpoint", files["checkpoint"], "-o", out]
    result = call(*argv, *AUTO_FLAGS)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png.json",
        "a.png.overlay.png",
        "b.jpg.json",
        "b.jpg.overlay.png",
    ]
    assert "[1/2]" in result.stderr and "[2/2]" in result.stderr

    model = SAM.from_checkpoint(files["checkpoint"])
    generator = SAMAutomaticMaskGenerator(
        model,
        points_per_side=4,
        pred_iou_thresh=-100,
        stability_score_thresh=0,
        stability_score_offset=0.1,
    )
    image = np.asarray(Image.open(folder / "a.png").convert("RGB"))
    expected = generator.generate(image)
    document = json.loads((out / "a.png.json").read_text())
    assert document["images"][0]["height"] == 120
    annotations = document["annotations"]
    assert len(annotations) == len(expected) > 0
    for ann, record in zip(annotations, expected, strict=True):
        rle = mask_utils.frPyObjects(ann["segmentation"], 120, 160)
        decoded = mask_utils.decode(rle).astype(bool)
        np.testing.assert_array_equal(decoded, record["segmentation"])
        assert ann["bbox"] == list(record["bbox"])
        assert ann["area"] == record["area"]
    with Image.open(out / "a.png.overlay.png") as im:  # image + legend
        assert im.size[0] > 160 and im.size[1] >= 120

    # Done images are skipped; --overwrite redoes them.
    again = call(*argv, *AUTO_FLAGS)
    assert again.returncode == 0 and "skip" in again.stderr
    assert again.stdout == ""
    redo = call(*argv, *AUTO_FLAGS, "--overwrite")
    assert redo.returncode == 0 and "[2/2]" in redo.stderr


def test_auto_missing_input(files, tmp_path):
    result = run(
        "auto",
        tmp_path / "nothing",
        "--checkpoint",
        files["checkpoint"],
        "-o",
        tmp_path / "o",
    )
    assert result.returncode == 2 and "IMAGE_OR_DIR" in result.stderr


def test_demo_segments_a_held_out_picture(tmp_path):
    result = call("demo", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "IoU with the true mask" in result.stdout
    with Image.open(tmp_path / "demo_overlay.png") as im:
        assert im.mode == "RGB" and im.size[1] == 256


def test_default_backend_is_the_fastest_installed(monkeypatch):
    import importlib.util

    from keras_sam import cli

    real = importlib.util.find_spec
    # All three are installed in the test environment.
    assert cli.default_backend() == cli.BACKEND_PREFERENCE[0] == "tensorflow"
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow" else real(name, *a),
    )
    assert cli.default_backend() == "jax"


def test_without_backend_the_command_uses_the_default(tmp_path):
    result = run(
        "demo", "-o", tmp_path, unset=("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")
    )
    assert result.returncode == 0, result.stderr
    assert "backend: tensorflow" in result.stderr
    # TensorFlow's C++ info / warning lines after start-up are silenced
    # (the XLA clusters of the decoder log their compilation otherwise).
    assert "Compiled cluster using XLA" not in result.stderr
    assert "PredictCost" not in result.stderr


def test_backend_flag_chooses_the_backend(tmp_path):
    """`--backend` takes effect: building the parser (which lists the
    presets) imports no Keras."""
    # Not the default (TensorFlow); PyTorch, which compiles nothing.
    result = run(
        "--backend", "torch", "demo", "-o", tmp_path, unset=("KERAS_BACKEND",)
    )
    assert result.returncode == 0, result.stderr
    assert "backend: torch" in result.stderr
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keras_sam.models.presets, keras_sam.cli; "
            "sys.exit('keras' in sys.modules)",
        ],
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
        timeout=120,
    )
    assert probe.returncode == 0
