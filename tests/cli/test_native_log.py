"""The native libraries' log lines are kept off a command's stderr; the
command's own lines, progress and anything else pass unchanged."""

import subprocess
import sys

import pytest

from keras_sam.cli.native_log import is_native_log_line
from tests.cli import helpers

TF_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are "
    b"written to STDERR",
    b"I0000 00:00:1796031818.709960    3017 port.cc:153] oneDNN custom "
    b"operations are on.",
    b"I0000 00:00:1796031818.710559    3017 cudart_stub.cc:31] Could not "
    b"find cuda drivers on your machine, GPU will not be used.",
    b"E0000 00:00:1796031823.362335    3017 cuda_platform.cc:52] failed call "
    b"to cuInit: INTERNAL: CUDA error",
    b"W0000 00:00:1796031721.492573    1572 op_level_cost_estimator.cc:699] "
    b"Error in PredictCost() for the op: Softmax",
    b"To enable the following instructions: AVX2 FMA, in other operations, "
    b"rebuild TensorFlow with the appropriate compiler flags.",
]


@pytest.mark.parametrize("line", TF_LINES)
def test_native_log_lines_are_recognised(line):
    assert is_native_log_line(line)


@pytest.mark.parametrize(
    "line",
    [
        b"keras-sam: error: photo.png: no such file",
        b"F0000 00:00:1796031823.362335    3017 check.cc:1] Check failed",
        b"Segmentation fault",
        b"I0000 is not a log line",
        b"",
    ],
)
def test_other_lines_are_not(line):
    assert not is_native_log_line(line)


SCRIPT = r"""
import os, sys
from keras_sam.cli.native_log import NativeLogFilter

lines = [bytes.fromhex(h) for h in sys.argv[1:]]
f = NativeLogFilter()
assert f.start()
os.write(2, b"native one\n" + lines[0] + b"\n")
for line in lines[1:]:
    os.write(2, line + b"\n")
print("progress 1/2", end="\r", file=sys.stderr, flush=True)
os.write(2, b"native two\nF0000 00:00:1.0 1 check.cc:1] fatal\nunfinished")
print("keras-sam: done", file=sys.stderr)
f.stop()
os.write(2, b"\nafter\n")
f.stop()  # twice: nothing more
"""


def test_filter_drops_native_log_lines_and_passes_the_rest():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *(line.hex() for line in TF_LINES)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr
    for line in TF_LINES:
        assert line not in err
    # Python's own writes go straight to stderr, a line (or a flushed
    # `\r` progress line) in one write; the native ones keep their order and
    # reach it by `stop`, the unfinished last line included.
    python = [b"progress 1/2\r", b"keras-sam: done\n"]
    positions = [err.index(part) for part in python]
    assert positions == sorted(positions), err
    native = [
        b"native one\n",
        b"native two\n",
        b"F0000 00:00:1.0 1 check.cc:1] fatal\n",
        b"unfinished",
        b"\nafter\n",
    ]
    positions = [err.index(part) for part in native]
    assert positions == sorted(positions), err


@pytest.mark.integration
def test_a_command_on_tensorflow_shows_only_its_own_lines(tmp_path):
    """TensorFlow writes such lines at its import (absl's notice, oneDNN's
    and CUDA's probes; checked first, else this test would prove nothing);
    `segment` on TensorFlow shows only its own lines."""
    from keras_sam import io
    from support.fixtures import smooth_image

    plain = subprocess.run(
        [sys.executable, "-c", "import keras_sam, tensorflow"],
        capture_output=True,
        timeout=120,
    )
    assert any(map(is_native_log_line, plain.stderr.splitlines())), plain
    image = tmp_path / "photo.png"
    io.write_png(smooth_image((120, 160, 3)), image)
    result = helpers.run(
        "--backend", "tensorflow", "segment", image, "--point", "80,60",
        "--preset", "sam_shapes", "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("keras-sam: ") for line in lines), (
        result.stderr
    )
