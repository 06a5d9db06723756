"""Every Python block of the README and of `docs/` runs.

The ```python blocks of each Markdown file run in order, in one namespace
per file, in a fresh temporary folder, as a reader would paste them. A block
fenced ```python no-run is shown, not run (it needs a download, or is a
sketch); it must still compile. Blocks that load the official ViT-B
checkpoint `sam_vit_b_01ec64.pth` get a random-weight checkpoint of the
official layout under that name, made with the official code: the docs run
offline.

Running the blocks is marked `integration`: `make test` runs it on one
backend (`INTEGRATION_BACKEND`, PyTorch); the compile test runs on every
backend.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CHECKPOINT = "sam_vit_b_01ec64.pth"
NO_RUN = "no-run"
# A fence at the start of a line: ```python[ info words]; the block ends at
# the next line holding only ```.
FENCE = re.compile(r"^```python\b([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
# An indented fence (in a list item) or an unclosed one would escape the
# pattern above.
INDENTED = re.compile(r"^[ \t]+```python", re.M)
OPENING = re.compile(r"^```python\b", re.M)


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """`(line, code, runs)` for each ```python block of `path`, `line` the
    first line of the code in the file."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start(2)) + 1
        runs = NO_RUN not in match.group(1).split()
        blocks.append((line, match.group(2), runs))
    return blocks


# The files with a Python block to run.
WITH_CODE = [p for p in DOCS if any(runs for _, _, runs in python_blocks(p))]


def compiled(path: Path, line: int, code: str):
    # Leading newlines keep the file's line numbers in tracebacks.
    return compile("\n" * (line - 1) + code, str(path), "exec")


def _doc_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory) -> Path:
    """A ViT-B checkpoint of the official layout with random weights."""
    import torch

    from support.reference import official

    torch.manual_seed(0)
    model = official.sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("official") / CHECKPOINT
    torch.save(model.state_dict(), path)
    return path


def test_docs_found():
    assert (ROOT / "README.md") in DOCS
    assert (ROOT / "README.md") in WITH_CODE


@pytest.mark.parametrize("path", DOCS, ids=_doc_id)
def test_blocks_compile(path):
    text = path.read_text(encoding="utf-8")
    indented = INDENTED.search(text)
    assert indented is None, (
        f"{_doc_id(path)}: a ```python fence must start its line, or the "
        "block would not be tested: " + repr(indented.group(0))
    )
    blocks = python_blocks(path)
    assert len(OPENING.findall(text)) == len(blocks), (
        f"{_doc_id(path)}: a ```python block is not closed"
    )
    for line, code, _ in blocks:
        compiled(path, line, code)


@pytest.mark.integration
@pytest.mark.parametrize("path", WITH_CODE, ids=_doc_id)
def test_blocks_run(path, tmp_path, monkeypatch, request):
    blocks = python_blocks(path)
    if any(CHECKPOINT in code for _, code, runs in blocks if runs):
        checkpoint = request.getfixturevalue("official_checkpoint")
        (tmp_path / CHECKPOINT).symlink_to(checkpoint)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for line, code, runs in blocks:
        if runs:
            exec(compiled(path, line, code), namespace)
