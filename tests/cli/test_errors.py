"""Every command-line failure is one line on stderr naming the problem, no
traceback (unless --verbose), exit status 2 for usage and 1 for failures;
what can be checked is checked before the model loads (these cases import
no Keras, so each takes about a second)."""

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from support import fixtures as tp
from tests.cli.helpers import assert_fails
from tests.cli.helpers import call
from tests.cli.helpers import messages
from tests.cli.helpers import run

pytestmark = pytest.mark.integration

# `keras-sam ARGS` with `keras_sam.cli.convert.run` replaced by `RAISE`.
RAISING = (
    "import sys; import keras_sam.cli as cli; "
    "import keras_sam.cli.convert as convert\n"
    "def broken(parser, args):\n    {raise_}\n"
    "convert.run = broken; sys.exit(cli.main(sys.argv[1:]))"
)
# `keras-sam ARGS` as if JAX were not installed.
WITHOUT_JAX = (
    "import importlib.util as u, sys; real = u.find_spec; "
    "u.find_spec = lambda n, *a: None if n == 'jax' else real(n, *a); "
    "from keras_sam.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.fixture
def place(tmp_path):
    """A picture, a folder of pictures, a plain file, a folder nested in
    a folder of the same name, a folder without pictures."""
    image = tmp_path / "photo.png"
    Image.fromarray(tp.smooth_image((32, 48, 3))).save(image)
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.fromarray(tp.smooth_image((32, 48, 3))).save(folder / "p.png")
    nested = tmp_path / "nest" / "nest" / "nest"
    nested.mkdir(parents=True)
    Image.fromarray(tp.smooth_image((32, 48, 3))).save(nested / "y.png")
    (tmp_path / "file.txt").write_text("a file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    (tmp_path / "c.safetensors").write_text("not a checkpoint")
    return tmp_path


SEGMENT = ["segment", "{t}/photo.png", "--point", "1,1"]
BUNDLED = ["--preset", "sam_shapes"]

USAGE_ERRORS = {
    "segment a folder": (
        ["segment", "{t}/pictures", "--point", "1,1", *BUNDLED, "-o", "{t}/o"],
        ["IMAGE", "is a folder"],
    ),
    "segment -o a file": (
        [*SEGMENT, *BUNDLED, "-o", "{t}/file.txt"],
        ["-o/--output", "is a file"],
    ),
    "auto -o a file": (
        ["auto", "{t}/pictures", *BUNDLED, "-o", "{t}/file.txt"],
        ["-o/--output", "is a file"],
    ),
    "auto -o below a file": (
        ["auto", "{t}/pictures", *BUNDLED, "-o", "{t}/file.txt/out"],
        ["-o/--output", "cannot create"],
    ),
    "auto results into an input folder": (
        ["auto", "{t}/nest/nest", "--recursive", *BUNDLED, "-o", "{t}/nest"],
        ["-o/--output", "into the input folder"],
    ),
    "auto without pictures": (
        ["auto", "{t}/empty", *BUNDLED, "-o", "{t}/o"],
        ["IMAGE_OR_DIR", "no pictures found"],
    ),
    "auto bad generator flag": (
        ["auto", "{t}/pictures", *BUNDLED, "--points-per-side", "0"],
        ["--points-per-side", "must be an integer >= 1"],
    ),
    "checkpoint a folder": (
        ["auto", "{t}/pictures", "--checkpoint", "{t}/empty", "-o", "{t}/o"],
        ["--checkpoint", "is a folder"],
    ),
    "two mask choices": (
        [*SEGMENT, *BUNDLED, "--multimask", "--single-mask-output"],
        ["--single-mask-output", "not allowed with"],
    ),
    "convert into a missing folder": (
        ["convert", "{t}/c.safetensors", "-o", "{t}/nowhere/x.safetensors"],
        ["-o/--output", "no such folder"],
    ),
    "convert over its input": (
        ["convert", "{t}/c.safetensors", "-o", "{t}/c.safetensors"],
        ["-o/--output", "input CHECKPOINT"],
    ),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_are_one_line_and_exit_2(place, case):
    args, fragments = USAGE_ERRORS[case]
    argv = [a.format(t=place) for a in args]
    if argv[0] in ("segment", "auto") and "-o" not in argv:
        argv += ["-o", str(place / "o")]
    result = run(*argv)
    assert_fails(result, 2, *fragments)
    assert result.stdout == ""
    assert not (place / "o").exists()  # nothing created


def test_backend_not_installed(place):
    result = run(
        "-c", WITHOUT_JAX, "--backend", "jax", "convert", "x", "-o", "y"
    )
    assert_fails(
        result, 2, "--backend", "jax", "not installed", "keras-sam[jax]"
    )
    result = run("convert", "x", "-o", "y", env={"KERAS_BACKEND": "tensorflo"})
    assert_fails(result, 2, "$KERAS_BACKEND", "unknown")


def test_offline_preset_is_one_line(place):
    result = run(
        "auto", place / "pictures", "--preset", "sam_vit_b", "-o", place / "o",
        env={
            "KERAS_SAM_CACHE": str(place / "cache"),
            "https_proxy": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "no_proxy": "",
            "NO_PROXY": "",
        },
        timeout=120,
    )  # fmt: skip
    assert_fails(result, 1, "sam_vit_b", "--checkpoint")
    assert "loading model" not in result.stderr  # nothing was built


def test_weights_file_without_architecture(place):
    import h5py

    path = place / "other.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=[1.0])
    result = run("auto", place / "pictures", "--checkpoint", path,
                 "-o", place / "o")  # fmt: skip
    assert_fails(result, 1, "other.weights.h5", "--preset")
    (place / "bad.weights.h5").write_text("not HDF5")
    result = run("auto", place / "pictures", "--checkpoint",
                 place / "bad.weights.h5", "-o", place / "o2")  # fmt: skip
    assert_fails(result, 1, "bad.weights.h5", "cannot read")


def test_unexpected_errors_are_one_line_unless_verbose(place):
    argv = ["convert", "x", "-o", "y.safetensors"]
    boom = RAISING.format(raise_="raise RuntimeError('boom')")
    result = run("-c", boom, *argv)
    line = assert_fails(result, 1, "RuntimeError: boom", "--verbose")
    assert line.startswith("keras-sam: error: ")
    for flags, env in ((["--verbose"], {}), ([], {"KERAS_SAM_DEBUG": "1"})):
        verbose = run("-c", boom, *flags, *argv, env=env)
        assert verbose.returncode == 1
        assert "Traceback" in verbose.stderr and "boom" in verbose.stderr
    # --verbose also after the command
    verbose = run("-c", boom, *argv, "--verbose")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    interrupted = run(
        "-c", RAISING.format(raise_="raise KeyboardInterrupt"), *argv
    )
    assert interrupted.returncode == 130
    assert "Traceback" not in interrupted.stderr
    assert messages(interrupted.stderr) == ["keras-sam: interrupted"]


def bomb(path: Path, side: int = 20_000) -> Path:
    """A PNG header claiming `side` x `side` pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
    return path


def test_auto_reports_a_bad_picture_and_goes_on(place):
    """A decompression bomb is reported and the next picture is done; one
    that keeps no mask says why; the exit status says one failed."""
    folder = place / "pictures"
    bomb(folder / "a_bomb.png")
    result = call(
        "auto", folder, "--preset", "sam_shapes", "--points-per-side", "2",
        "--pred-iou-thresh", "2", "-o", place / "out",
    )  # fmt: skip
    assert_fails(result, 1, "a_bomb.png")
    lines = messages(result.stderr)
    assert any("1 of 2 pictures failed" in line for line in lines), lines
    (why,) = [line for line in lines if "no mask" in line]
    assert "p.png" in why and "--pred-iou-thresh 2" in why
    assert sorted(p.name for p in (place / "out").iterdir()) == [
        "p.png.json",
        "p.png.overlay.png",
    ]
