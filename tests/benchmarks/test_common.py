"""`benchmarks._common.write_run`: a new run of a case replaces that case's
latest run on its slot and moves the old one, unchanged, to the history."""

import re
import types
from pathlib import Path

from benchmarks import _common

ROOT = Path(__file__).parents[2]
TITLE = "Prompt encoder + mask decoder (ViT-B)"


def _run(date: str, ms: str) -> str:
    return f"### tensorflow (cpu), {date}\n\n| ours | {ms} |\n"


def test_second_run_is_latest_and_first_is_kept(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nIntro.\n")
    _common.write_run(path, TITLE, "tensorflow/cpu", _run("2026-01-01", "1"))
    _common.write_run(path, TITLE, "tensorflow/cpu", _run("2026-02-02", "2"))
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nIntro.\n")
    latest = text.index("<!-- latest:prompt-encoder-mask-decoder-vit-b -->")
    new = text.index("| ours | 2 |")
    history = text.index("<!-- history:prompt-encoder-mask-decoder-vit-b -->")
    old = text.index("| ours | 1 |")
    assert latest < new < text.index(_common.HISTORY) < history < old
    assert text.count("| ours | 1 |") == text.count("| ours | 2 |") == 1
    assert text.count(f"## {TITLE}\n") == 1
    assert f"## History: {TITLE}\n" in text

    # A third run: the history keeps both old runs, oldest first.
    _common.write_run(path, TITLE, "tensorflow/cpu", _run("2026-03-03", "3"))
    text = path.read_text()
    assert text.index("| ours | 3 |") < text.index(_common.HISTORY)
    assert text.index(_common.HISTORY) < text.index("| ours | 1 |")
    assert text.index("| ours | 1 |") < text.index("| ours | 2 |")
    assert text.count("<!-- history:") == 1


def test_other_slots_and_cases_are_left_alone(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    _common.write_run(path, TITLE, "tensorflow/cpu", _run("2026-01-01", "tf"))
    _common.write_run(path, TITLE, "jax/cpu", _run("2026-01-01", "jax"))
    _common.write_run(path, TITLE, "tensorflow/cpu", _run("2026-02-02", "tf2"))
    _common.write_run(path, "Other case", "jax/cpu", _run("2026-02-02", "x"))
    text = path.read_text()
    cut = text.index(_common.HISTORY)
    # The new tensorflow run took the old one's place, before jax's.
    assert text.index("| ours | tf2 |") < text.index("| ours | jax |") < cut
    # A new case goes with the latest sections, before the history.
    assert text.index("<!-- latest:other-case -->") < cut
    assert text.index("| ours | tf |") > cut
    assert "<!-- history:other-case -->" not in text


def test_report_writes_command_and_stamp(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_common, "ROOT", tmp_path)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    script = tmp_path / "benchmarks" / "decoder.py"
    monkeypatch.setattr("sys.argv", [str(script), "--threads", "2"])
    args = types.SimpleNamespace(device="cpu", threads=2, no_write=False)
    _common.report(TITLE, "| ours | 1 |", args)
    _common.report(TITLE, "| ours | 2 |", args)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    command = "python benchmarks/decoder.py --threads 2"
    assert text.count(f"```sh\n{command}\n```") == 2
    assert text.index("| ours | 2 |") < text.index("| ours | 1 |")
    assert "<!-- run:jax/cpu -->\n### jax (cpu), " in text
    assert "KERAS_BACKEND=jax, 2 threads" in text
    assert "update its row in the summary table" in capsys.readouterr().out


def test_repository_file_is_well_formed():
    """Every case of BENCHMARKS.md has one run per slot in its latest
    section, and the latest sections all come before the history."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    cut = text.index(_common.HISTORY)
    cases = re.findall(r"<!-- latest:([a-z0-9-]+) -->", text)
    assert cases
    for case in cases:
        start = text.index(f"<!-- latest:{case} -->")
        end = text.index(f"<!-- /latest:{case} -->")
        assert start < end < cut
        slots = re.findall(r"(?m)^<!-- run:(\S+) -->", text[start:end])
        assert slots and len(slots) == len(set(slots)), case
    for case in re.findall(r"<!-- history:([a-z0-9-]+) -->", text):
        assert case in cases
        assert cut < text.index(f"<!-- /history:{case} -->")
