"""The page in a real browser (Debian's Chromium driven by Playwright)
against the real server: upload a held-out picture, click, drag a box,
undo, choose another candidate, segment everything, download.

Chromium must be installed (`apt-get install chromium`, which `.ci/run`
does): without it this test fails, it does not skip.
"""

import base64
import io
import json
import os
import shutil
import statistics

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

SCENE_SEED = (10_000_000, 7, 0, 1)  # held out: `keras-sam demo`'s picture
SIZE = 256
TIMEOUT_MS = 60_000


def chromium_path() -> str:
    path = os.environ.get("KERAS_SAM_CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.fail(
            "the browser test needs Debian's Chromium: apt-get install "
            "chromium (or set $KERAS_SAM_CHROMIUM)"
        )
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=args)
        yield b
        b.close()


def screenshot_dir(tmp_path):
    """Where screenshots go: $KERAS_SAM_SCREENSHOTS, else the test's
    temporary folder."""
    folder = os.environ.get("KERAS_SAM_SCREENSHOTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    return folder


def shown(page, which="maskDataURL") -> np.ndarray:
    """The mask the page shows: bool `(H, W)` from its layer's alpha."""
    url = page.evaluate(f"() => kerasSam.{which}()")
    data = base64.b64decode(url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as layer:
        return np.asarray(layer)[..., 3] > 0


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def settle(page):
    """Wait until the answer to the last prompt is shown."""
    page.wait_for_function(
        "() => kerasSam.state.answered === kerasSam.state.seq",
        timeout=TIMEOUT_MS,
    )


def to_page(page, x, y):
    box = page.locator("#prompt-layer").bounding_box()
    return (
        box["x"] + (float(x) + 0.5) / SIZE * box["width"],
        box["y"] + (float(y) + 0.5) / SIZE * box["height"],
    )


def test_click_box_undo_candidates_everything(server, browser, tmp_path):
    from keras_sam.inference.amg_utils import rle_to_mask
    from keras_sam.training.datasets.shapes import make_scene
    from keras_sam.training.evaluation import interior_point
    from keras_sam.training.evaluation import tight_box

    url, _ = server
    image, masks = make_scene(SCENE_SEED, image_size=(SIZE, SIZE))
    picture = tmp_path / "held_out.png"
    Image.fromarray(image).save(picture)
    order = np.argsort([-m.sum() for m in masks])
    clicked, boxed = masks[order[0]], masks[order[1]]
    shots = screenshot_dir(tmp_path)

    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("#examples button", timeout=TIMEOUT_MS)
    page.set_input_files("#file", str(picture))
    page.wait_for_function(
        "() => document.querySelector('#status').textContent"
        ".startsWith('Ready')",
        timeout=TIMEOUT_MS,
    )

    # hover: a preview of the mask under the cursor
    page.mouse.move(*to_page(page, *interior_point(clicked)))
    page.wait_for_function(
        "() => { const c = document.querySelector('#hover-layer');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width,"
        " c.height).data; for (let i = 3; i < d.length; i += 4)"
        " if (d[i]) return true; return false; }",
        timeout=TIMEOUT_MS,
    )
    page.uncheck("#hover")

    # one click: three candidates, the best shown, the object found
    page.mouse.click(*to_page(page, *interior_point(clicked)))
    settle(page)
    assert page.locator("#candidates button").count() == 3
    click_mask = shown(page)
    assert iou(click_mask, clicked) >= 0.8
    page.screenshot(path=os.path.join(shots, "serve_click.png"))

    # another candidate: the page shows exactly that candidate's mask
    state = page.evaluate("() => kerasSam.state")
    other = (state["chosen"] + 1) % 3
    page.locator("#candidates button").nth(other).click()
    expected = rle_to_mask(state["candidates"][other]["rle"])
    assert np.array_equal(shown(page), expected)
    assert page.evaluate("() => kerasSam.state.chosen") == other

    # undo the click: nothing left; a box on another object
    page.click("#undo")
    settle(page)
    assert not shown(page).any()
    x1, y1, x2, y2 = tight_box(boxed)
    page.mouse.move(*to_page(page, x1, y1))
    page.mouse.down()
    page.mouse.move(*to_page(page, x2, y2), steps=8)
    page.mouse.up()
    settle(page)
    box_mask = shown(page)
    assert iou(box_mask, boxed) >= 0.8
    assert page.locator("#candidates button").count() == 0  # one mask

    # a background click changes the mask; undo brings the box's back
    page.mouse.click(*to_page(page, *interior_point(boxed)), button="right")
    settle(page)
    assert page.evaluate("() => kerasSam.state.actions.length") == 2
    assert not np.array_equal(shown(page), box_mask)
    page.click("#undo")
    settle(page)
    assert np.array_equal(shown(page), box_mask)

    # downloads: the mask as PNG, every mask as COCO JSON
    with page.expect_download() as info:
        page.click("#download-png")
    with Image.open(info.value.path()) as downloaded:
        png = np.asarray(downloaded.convert("L")) > 127
    assert np.array_equal(png, box_mask)

    # segment everything, with progress
    page.click("#everything")
    page.wait_for_function(
        "() => kerasSam.state.everything.length > 0", timeout=TIMEOUT_MS
    )
    count = page.evaluate("() => kerasSam.state.everything.length")
    assert shown(page, "everythingDataURL").any()
    assert f"{count} masks" in page.text_content("#status")
    page.screenshot(path=os.path.join(shots, "serve_everything.png"))
    with page.expect_download() as info:
        page.click("#download-coco")
    document = json.loads(info.value.path().read_text())
    assert len(document["annotations"]) == count + 1
    last = rle_to_mask(document["annotations"][-1]["segmentation"])
    assert np.array_equal(last, box_mask)

    # clear
    page.click("#clear")
    assert not shown(page).any()
    assert not shown(page, "everythingDataURL").any()
    timings = page.evaluate("() => kerasSam.timings")
    print(f"click-to-mask ms: median {statistics.median(timings):.1f}")
    assert not errors, errors
    page.close()
