"""The HTTP API against a real server on 127.0.0.1 (bundled model): every
route, every error, eviction, concurrent clients and a bounded soak."""

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from support.live_server import serve_in_thread
from tests.serve.conftest import MAX_IMAGES
from tests.serve.conftest import MAX_UPLOAD_BYTES

pytestmark = pytest.mark.integration

# The held-out picture of `keras-sam demo`, at the bundled model's size
SCENE_SEED = (10_000_000, 7, 0, 1)


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scene():
    from keras_sam.training.datasets.shapes import make_scene

    image, masks = make_scene(SCENE_SEED, image_size=(256, 256))
    return image, masks


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def image_id(client, scene):
    return upload(client, png_bytes(scene[0]))


def upload(client, data: bytes, name: str = "scene.png") -> str:
    r = client.post("/api/images", files={"file": (name, data)})
    assert r.status_code == 200, r.text
    return r.json()["image_id"]


def decode(mask: dict) -> np.ndarray:
    from keras_sam.inference.amg_utils import rle_to_mask

    return rle_to_mask(mask["rle"])


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def assert_error(response, status: int, *words: str):
    """A one-sentence JSON error with `status`, naming `words`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    text = body["error"]
    assert "\n" not in text and "Traceback" not in text, text
    for word in words:
        assert word in text, text


def test_upload_answers_id_and_size(client, scene):
    data = png_bytes(scene[0])
    r = client.post("/api/images", files={"file": ("a.png", data)})
    assert r.status_code == 200
    body = r.json()
    assert (body["width"], body["height"]) == (256, 256)
    # ids are unguessable: 128 random bits, new for every upload
    other = upload(client, data)
    assert other != body["image_id"] and len(other) >= 22


def test_click_and_box_give_the_object(client, image_id, scene):
    from keras_sam.training.evaluation import interior_point
    from keras_sam.training.evaluation import tight_box

    _, masks = scene
    big = masks[np.argmax([m.sum() for m in masks])]
    x, y = (float(v) for v in interior_point(big))
    r = client.post(
        f"/api/images/{image_id}/predict",
        json={"points": [[x, y]], "labels": [1], "multimask": True},
    )
    assert r.status_code == 200, r.text
    found = r.json()["masks"]
    assert len(found) == 3
    assert all(decode(m).shape == (256, 256) for m in found)
    best = max(found, key=lambda m: m["score"])
    assert iou(decode(best), big) >= 0.8
    box = [float(v) for v in tight_box(big)]
    r = client.post(
        f"/api/images/{image_id}/predict",
        json={"box": box, "multimask": False},
    )
    (only,) = r.json()["masks"]
    assert iou(decode(only), big) >= 0.8


def test_previous_mask_refines(client, scene):
    fresh = upload(client, png_bytes(scene[0]))
    url = f"/api/images/{fresh}/predict"
    assert_error(
        client.post(url, json={"points": [[100, 100]], "previous_mask": True}),
        400,
        "previous_mask",
    )
    first = client.post(url, json={"points": [[200, 150]], "labels": [1]})
    assert first.status_code == 200
    again = {"points": [[200, 150]], "labels": [1], "multimask": False}
    plain = client.post(url, json=again).json()["masks"][0]["score"]
    # remembered: the single-mask call above replaced the three candidates
    assert_error(
        client.post(
            url, json={**again, "previous_mask": True, "previous_index": 2}
        ),
        400,
        "previous_index",
    )
    refined = client.post(url, json={**again, "previous_mask": True})
    assert refined.status_code == 200, refined.text
    # the mask prompt changes the decoder's input, so its score
    assert refined.json()["masks"][0]["score"] != plain


def test_bad_prompts_are_400_or_422(client, image_id):
    url = f"/api/images/{image_id}/predict"
    assert_error(
        client.post(url, json={"points": [[300, 10]], "labels": [1]}),
        400,
        "points must lie inside the image",
    )
    assert_error(
        client.post(url, json={"points": [[6, 10]], "labels": [1, 0]}), 400
    )
    assert_error(
        client.post(url, json={"points": [[6, 10]], "labels": [3]}),
        400,
        "labels",
    )
    assert_error(client.post(url, json={}), 400, "at least one point")
    assert_error(client.post(url, json={"box": [50, 50, 10, 10]}), 400, "box")
    assert_error(
        client.post(
            url,
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        422,
        "not valid JSON",
    )
    assert_error(client.post(url, json={"points": "x"}), 422, "points")
    assert_error(client.post(url, json={"pointz": []}), 422, "pointz")
    assert_error(
        client.post(url, json={"points": [[1, 2]], "multimask": "yes"}),
        422,
        "multimask",
    )


def test_unknown_ids_are_404(client):
    assert_error(
        client.post("/api/images/nope/predict", json={"points": [[1, 1]]}),
        404,
        "no image nope",
    )
    assert_error(client.delete("/api/images/nope"), 404, "nope")
    assert_error(client.post("/api/images/nope/everything"), 404)


def test_delete(client, scene):
    gone = upload(client, png_bytes(scene[0]))
    r = client.delete(f"/api/images/{gone}")
    assert r.status_code == 200 and r.json() == {"deleted": gone}
    assert_error(
        client.post(f"/api/images/{gone}/predict", json={"points": [[1, 1]]}),
        404,
    )


def test_bad_uploads_are_refused(client):
    big = np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8)
    data = png_bytes(big)
    assert len(data) > MAX_UPLOAD_BYTES
    assert_error(
        client.post("/api/images", files={"file": ("big.png", data)}),
        413,
        f"limit of {MAX_UPLOAD_BYTES} bytes",
    )
    # a small file whose header claims more pixels than the server decodes
    bomb = png_bytes(np.zeros((1000, 1000), np.uint8))
    assert len(bomb) < MAX_UPLOAD_BYTES
    assert_error(
        client.post("/api/images", files={"file": ("bomb.png", bomb)}),
        413,
        "bomb.png",
        "decompression bomb",
    )
    assert_error(
        client.post("/api/images", files={"file": ("notes.txt", b"hello")}),
        400,
        "cannot read notes.txt as an image",
    )
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    truncated = png_bytes(noise)[:5000]
    assert_error(
        client.post("/api/images", files={"file": ("cut.png", truncated)}),
        400,
        "cut.png",
    )
    assert_error(
        client.post("/api/images", files={"file": ("empty.png", b"")}),
        400,
        "empty",
    )
    assert_error(
        client.post("/api/images", files={"other": ("a.png", b"x")}),
        400,
        "'file'",
    )
    assert_error(client.post("/api/images", content=b"raw"), 415, "multipart")


def test_everything_gives_coco_annotations_with_progress(client, image_id):
    seen = []
    stop = threading.Event()

    def poll():
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            while not stop.is_set():
                seen.append(c.get(f"/api/images/{image_id}/progress").json())

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        r = client.post(f"/api/images/{image_id}/everything")
    finally:
        stop.set()
        watcher.join()
    assert r.status_code == 200, r.text
    document = r.json()
    assert document["images"][0]["width"] == 256
    annotations = document["annotations"]
    assert annotations
    for a in annotations:
        mask = decode({"rle": a["segmentation"]})
        assert mask.shape == (256, 256) and mask.sum() == a["area"]
    running = [p for p in seen if p["running"]]
    assert running and all(p["total"] == running[0]["total"] for p in running)
    assert max(p["done"] for p in running) >= 1
    assert_error(
        client.post(
            f"/api/images/{image_id}/everything", json={"points_per_side": 0}
        ),
        422,
        "points_per_side",
    )


def test_page_openapi_and_examples(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "app.js" in r.text
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json").json()
    for route in (
        "/api/images",
        "/api/images/{image_id}/predict",
        "/api/images/{image_id}/everything",
        "/api/images/{image_id}",
    ):
        assert route in spec["paths"], sorted(spec["paths"])
    # nothing lists the pictures or sends one back: an id is the only key
    assert client.get("/api/images").status_code == 405
    for path, methods in spec["paths"].items():
        if path.startswith("/api/images"):
            assert "get" not in methods or path.endswith("/progress"), path
    examples = client.get("/api/examples").json()["examples"]
    image = Image.open(io.BytesIO(client.get(examples[0]["url"]).content))
    assert image.size == (256, 256)
    assert_error(client.get("/api/examples/nope.png"), 404, "nope")


def test_least_recently_used_is_evicted(shapes_model, scene):
    from keras_sam.serve.app import create_app

    app = create_app(shapes_model, max_images=2)
    data = png_bytes(scene[0][:64, :64])
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as c:
        first, second = upload(c, data), upload(c, data)
        ok = c.post(f"/api/images/{first}/predict", json={"points": [[9, 9]]})
        assert ok.status_code == 200  # first is now the most recent
        upload(c, data)  # evicts second
        assert_error(
            c.post(f"/api/images/{second}/predict", json={"points": [[9, 9]]}),
            404,
            "evicted",
        )
        assert len(app.state.store) == 2


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_soak_concurrent_clients_memory_flat(server, scene):
    """8 clients x 50 prompts at once: no error, every mask the right
    size, memory flat after the first round of 10 prompts each."""
    url, app = server
    image, masks = scene
    data = png_bytes(image)
    rng = np.random.default_rng(0)
    prompts = rng.uniform(0, 255, (8, 50, 2)).tolist()
    clients = [httpx.Client(base_url=url, timeout=120) for _ in range(8)]
    try:
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda c: upload(c, data), clients))

            def run(k, start, stop):
                for x, y in prompts[k][start:stop]:
                    r = clients[k].post(
                        f"/api/images/{ids[k]}/predict",
                        json={"points": [[x, y]], "labels": [1]},
                    )
                    assert r.status_code == 200, r.text
                    assert len(r.json()["masks"]) == 3

            list(pool.map(run, range(8), [0] * 8, [10] * 8))
            after_first = rss_bytes()
            list(pool.map(run, range(8), [10] * 8, [50] * 8))
            after_all = rss_bytes()
    finally:
        for c in clients:
            c.close()
    assert len(app.state.store) <= MAX_IMAGES
    growth = (after_all - after_first) / 2**20
    print(json.dumps({"rss_growth_mib": round(growth, 1)}))
    assert growth < 40, f"memory grew {growth:.1f} MiB over 320 prompts"


def test_warm_up_leaves_pictures_usable(server, client, image_id):
    _, app = server
    url = f"/api/images/{image_id}/predict"
    before = client.post(url, json={"points": [[60, 80]], "remember": False})
    app.state.segmenter.warm_up()  # encodes a blank picture of its own
    after = client.post(url, json={"points": [[60, 80]], "remember": False})
    assert after.status_code == 200
    assert after.json() == before.json()
