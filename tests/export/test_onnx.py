"""The exported ONNX files in ONNX Runtime against our Keras predictor and
against the official export (`SamOnnxModel`)."""

import importlib
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from keras_sam.export import interface
from support.fixtures import smooth_image
from tests import helpers

pytestmark = pytest.mark.integration

# Pictures of three aspect ratios (the tiny model's input is 256).
SHAPES = [(480, 640, 3), (1500, 2250, 3), (1024, 300, 3)]


def _rel(actual, expected) -> float:
    return float(
        np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)
    )


def _assert_masks_equal(actual_logits, expected_logits):
    """Thresholded masks equal except where the expected logit is within
    `MASK_LOGIT_MARGIN` of the threshold."""
    differ = (actual_logits > 0) != (expected_logits > 0)
    near = np.abs(expected_logits) < helpers.MASK_LOGIT_MARGIN
    assert not np.any(differ & ~near), int(np.sum(differ & ~near))


def _prompts(h, w):
    rng = np.random.default_rng(h + w)
    points = rng.uniform(0, 1, (8, 3, 2)) * [w, h]
    boxes = np.sort(rng.uniform(0, 1, (8, 2, 2)) * [w, h], axis=1)
    return {
        "point": dict(point_coords=[[0.5 * w, 0.4 * h]], point_labels=[1]),
        "points": dict(
            point_coords=[[0.5 * w, 0.4 * h], [0.1 * w, 0.9 * h], [w, 0]],
            point_labels=[1, 0, 1],
        ),
        "box": dict(box=[0.2 * w, 0.2 * h, 0.8 * w, 0.7 * h]),
        "box_points": dict(
            point_coords=[[0.5 * w, 0.5 * h]],
            point_labels=[0],
            box=[0.2 * w, 0.2 * h, 0.8 * w, 0.7 * h],
        ),
        "batch_points": dict(
            point_coords=points, point_labels=rng.integers(0, 2, (8, 3))
        ),
        "batch_boxes": dict(boxes=boxes.reshape(8, 4)),
    }


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def pair(request, official_and_ours, exported):
    """Our Keras predictor and the ONNX predictor on one picture."""
    from keras_sam.export import OnnxPredictor
    from keras_sam.inference.predictor import SAMPredictor

    image = smooth_image(request.param)
    ours = SAMPredictor(official_and_ours[1])
    ours.set_image(image)
    onnx = OnnxPredictor(exported)
    onnx.set_image(image)
    return ours, onnx, image


def test_interface(exported):
    import onnxruntime as ort

    decoder = ort.InferenceSession(exported / interface.DECODER_FILE)
    inputs = {i.name: (i.shape, i.type) for i in decoder.get_inputs()}
    assert list(inputs) == list(interface.DECODER_INPUTS)
    assert inputs["image_embeddings"] == ([1, 32, 16, 16], "tensor(float)")
    assert inputs["point_coords"] == (["B", "N", 2], "tensor(float)")
    assert inputs["point_labels"] == (["B", "N"], "tensor(float)")
    assert inputs["mask_input"] == (["B_mask", 1, 64, 64], "tensor(float)")
    assert inputs["has_mask_input"] == ([1], "tensor(float)")
    assert inputs["orig_im_size"] == ([2], "tensor(float)")
    outputs = {o.name: o.shape for o in decoder.get_outputs()}
    assert outputs == {
        "masks": ["B", 4, "H", "W"],
        "iou_predictions": ["B", 4],
        "low_res_masks": ["B", 4, 64, 64],
    }
    encoder = ort.InferenceSession(exported / interface.IMAGE_ENCODER_FILE)
    (image,) = encoder.get_inputs()
    assert (image.name, image.shape, image.type) == (
        "image",
        ["h", "w", 3],
        "tensor(uint8)",
    )
    # The weights went to the external data file.
    data = exported / (interface.IMAGE_ENCODER_FILE + ".data")
    assert (
        data.stat().st_size
        > 5 * (exported / "image_encoder.onnx").stat().st_size
    )


def test_image_encoder_matches_predictor(pair):
    ours, onnx, _ = pair
    expected = ours.get_image_embedding().transpose(0, 3, 1, 2)
    helpers.assert_close(
        onnx.get_image_embedding(), expected, helpers.PREDICTOR_RTOL
    )


@pytest.mark.parametrize(
    ("name", "multimask_output"),
    [
        ("point", True),
        ("point", False),
        ("points", True),
        ("box", False),
        ("box_points", True),
        ("box_points", False),
        ("batch_points", True),
        ("batch_boxes", False),
    ],
)
def test_predictions_match_predictor(pair, name, multimask_output):
    ours, onnx, image = pair
    prompt = _prompts(*image.shape[:2])[name]
    method = "predict_batch" if name.startswith("batch") else "predict"
    # Same embedding: the decoder alone is compared here.
    onnx.set_image_embedding(
        ours.get_image_embedding().transpose(0, 3, 1, 2), image.shape[:2]
    )
    kwargs = dict(prompt, multimask_output=multimask_output, return_logits=True)
    expected = getattr(ours, method)(**kwargs)
    actual = getattr(onnx, method)(**kwargs)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
    helpers.assert_close(actual[2], expected[2], helpers.PREDICTOR_RTOL)
    helpers.assert_close(actual[1], expected[1], helpers.PREDICTOR_RTOL)
    _assert_masks_equal(actual[0], expected[0])


def test_mask_prompts_match_predictor(pair):
    ours, onnx, image = pair
    onnx.set_image_embedding(
        ours.get_image_embedding().transpose(0, 3, 1, 2), image.shape[:2]
    )
    prompt = _prompts(*image.shape[:2])["point"]
    logits = ours.predict(**prompt)[2][:1]
    for kwargs in (dict(prompt, mask_input=logits), dict(mask_input=logits)):
        kwargs.update(multimask_output=False, return_logits=True)
        expected = ours.predict(**kwargs)
        actual = onnx.predict(**kwargs)
        helpers.assert_close(actual[2], expected[2], helpers.PREDICTOR_RTOL)
        helpers.assert_close(actual[1], expected[1], helpers.PREDICTOR_RTOL)
        _assert_masks_equal(actual[0], expected[0])


def _decoder_feed(predictor, coords, labels, mask=None):
    """The decoder's inputs for `(B, N, 2)` original-pixel points."""
    from keras_sam.inference import transforms

    coords = transforms.apply_coords(
        np.asarray(coords, np.float64),
        predictor.original_size,
        predictor.input_size,
    )
    return {
        "image_embeddings": predictor.get_image_embedding().transpose(
            0, 3, 1, 2
        ),
        "point_coords": coords.astype(np.float32),
        "point_labels": np.asarray(labels, np.float32),
        "mask_input": np.zeros((1, 1, 64, 64), np.float32)
        if mask is None
        else mask.astype(np.float32),
        "has_mask_input": np.array([mask is not None], np.float32),
        "orig_im_size": np.array(predictor.original_size, np.float32),
    }


def test_graph_upscaling_at_every_size(pair, exported):
    """The graph's own `masks` output: upscaled to the runtime size."""
    import onnxruntime as ort

    ours, _, image = pair
    h, w = image.shape[:2]
    session = ort.InferenceSession(exported / interface.DECODER_FILE)
    rng = np.random.default_rng(0)
    coords = np.concatenate(
        [rng.uniform(0, 1, (8, 2, 2)) * [w, h], np.zeros((8, 1, 2))], axis=1
    )
    labels = np.concatenate([rng.integers(0, 2, (8, 2)), -np.ones((8, 1))], 1)
    masks, iou, low_res = session.run(None, _decoder_feed(ours, coords, labels))
    assert masks.shape == (8, 4, h, w)
    expected = ours.upscale(low_res)
    _assert_masks_equal(masks, expected)
    helpers.assert_close(masks, expected, helpers.PREDICTOR_RTOL)


def test_official_export_is_right_at_its_dummy_size_only(
    official_and_ours, exported, tmp_path
):
    """The official `SamOnnxModel` traced with `torch.onnx` (its export
    script's way) turns the crop to the resized picture into constants of
    the dummy `orig_im_size`: at that size it agrees with ours, at another
    aspect ratio its masks are cropped wrongly while ours stay right."""
    import onnxruntime as ort

    from keras_sam.inference.predictor import SAMPredictor

    ref, model = official_and_ours
    dummy_size = (1500, 2250)
    path = tmp_path / "official.onnx"
    _export_official(ref, path, dummy_size)
    theirs = ort.InferenceSession(path)
    ours = ort.InferenceSession(exported / interface.DECODER_FILE)
    predictor = SAMPredictor(model)
    for size, right in ((dummy_size, True), ((480, 640), False)):
        predictor.set_image(smooth_image(size + (3,)))
        h, w = size
        feed = _decoder_feed(
            predictor, [[[0.5 * w, 0.4 * h], [0, 0]]], [[1, -1]]
        )
        our_masks, our_iou, our_low = ours.run(None, feed)
        their_masks, their_iou, their_low = theirs.run(None, feed)
        helpers.assert_close(our_low, their_low, helpers.PREDICTOR_RTOL)
        helpers.assert_close(our_iou, their_iou, helpers.PREDICTOR_RTOL)
        _assert_masks_equal(our_masks, predictor.upscale(our_low))
        wrong = np.mean((their_masks > 0) != (our_masks > 0))
        if right:
            _assert_masks_equal(their_masks, our_masks)
        else:
            # The official crop kept the dummy picture's 171 of 256 rows
            # instead of this one's 192: 4% of the pixels flip here.
            assert wrong > 0.01, wrong


def _export_official(ref, path, orig_im_size):
    """The official export script's steps: `SamOnnxModel` with all masks,
    `torch.onnx.export` (TorchScript tracing, opset 17, constant folding),
    dynamic point axis, a dummy `orig_im_size`."""
    import torch

    from support.reference import official  # noqa: F401 (stubs torchvision)

    # The official export's own module (as benchmarks/_references.py),
    # imported once `official` has stubbed torchvision.
    onnx_module = importlib.import_module("segment_anything.utils.onnx")
    onnx_model = onnx_module.SamOnnxModel(ref, return_single_mask=False)
    onnx_model.eval()
    c = ref.prompt_encoder.embed_dim
    he, we = ref.prompt_encoder.image_embedding_size
    dummy = {
        "image_embeddings": torch.randn(1, c, he, we),
        "point_coords": torch.randint(0, 256, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 4 * he, 4 * we),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor(orig_im_size, dtype=torch.float),
    }
    axes = {"point_coords": {1: "N"}, "point_labels": {1: "N"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings
        torch.onnx.export(
            onnx_model,
            tuple(dummy.values()),
            str(path),
            export_params=True,
            opset_version=17,
            do_constant_folding=True,
            input_names=list(dummy),
            output_names=list(interface.DECODER_OUTPUTS),
            dynamic_axes=axes,
            dynamo=False,
        )


def test_onnx_predictor_runs_without_keras(exported):
    """Keras, TensorFlow, JAX and PyTorch made unimportable: the ONNX
    predictor still encodes a picture and predicts."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras", "tensorflow", "jax", "torch"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
from keras_sam.export import OnnxPredictor
p = OnnxPredictor({str(exported)!r})
p.set_image(np.zeros((300, 400, 3), np.uint8))
masks, scores, logits = p.predict(point_coords=[[200, 150]], point_labels=[1])
assert masks.shape == (3, 300, 400) and scores.shape == (3,)
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_onnx_predictor_errors(exported):
    from keras_sam.export import OnnxPredictor

    onnx = OnnxPredictor(exported)
    with pytest.raises(RuntimeError, match="set_image"):
        onnx.predict(point_coords=[[1, 1]], point_labels=[1])
    onnx.set_image(np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="point_coords"):
        onnx.predict(point_coords=[[100, 1]], point_labels=[1])
    with pytest.raises(ValueError, match="point_labels"):
        onnx.predict(point_coords=[[1, 1]], point_labels=[7])
    with pytest.raises(ValueError, match="box"):
        onnx.predict(box=[10, 10, 5, 5])
    with pytest.raises(ValueError, match="mask_input"):
        onnx.predict(mask_input=np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="embedding"):
        onnx.set_image_embedding(np.zeros((1, 16, 16, 32)), (30, 40))
    with pytest.raises(ValueError, match="folder"):
        OnnxPredictor(exported / "missing")
    empty = onnx.predict_batch(boxes=np.zeros((0, 4)))
    assert [a.shape for a in empty] == [(0, 3, 30, 40), (0, 3), (0, 3, 64, 64)]
