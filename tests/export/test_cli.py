"""`keras-sam export` and the other formats (SavedModel, LiteRT)."""

import os

import keras
import numpy as np
import pytest

from keras_sam.cli import main
from support.fixtures import smooth_image
from tests import helpers
from tests.cli import helpers as cli_helpers


def test_another_backend_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(tmp_path / "model.pth"), "-o",
              str(tmp_path / "out")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--backend tensorflow" in capsys.readouterr().err


def test_a_missing_extra_is_one_sentence(tmp_path, monkeypatch, capsys):
    from keras_sam.cli import export

    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setattr(export, "_installed", lambda name: name != "tf2onnx")
    (tmp_path / "model.pth").write_bytes(b"")
    code = main(["export", "--checkpoint", str(tmp_path / "model.pth"),
                 "-o", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert 'pip install "keras-sam[export]"' in err


def test_existing_outputs_need_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    (tmp_path / "model.pth").write_bytes(b"")
    (tmp_path / "decoder.onnx").write_bytes(b"keep")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(tmp_path / "model.pth"), "-o",
              str(tmp_path)])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "decoder.onnx").read_bytes() == b"keep"


@pytest.mark.integration
def test_single_mask_decoder_from_the_command_line(
    official_and_ours, exported, tmp_path
):
    """`--single-mask --decoder-only`: one mask per prompt, picked by the
    official rule from the four (compared with the all-masks export)."""
    import onnxruntime as ort

    from keras_sam.export import OnnxPredictor

    # Our own safetensors keep the architecture (an official .pth would be
    # read with the default 8 decoder heads instead of the tiny model's 2).
    checkpoint = tmp_path / "tiny.safetensors"
    official_and_ours[1].save_keras_safetensors(checkpoint)
    out = tmp_path / "out"
    run = cli_helpers.run(
        "--backend", "tensorflow", "export", "--checkpoint", checkpoint,
        "--decoder-only", "--single-mask", "-o", out,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["decoder.onnx"]
    single = ort.InferenceSession(out / "decoder.onnx")
    full = ort.InferenceSession(exported / "decoder.onnx")
    predictor = OnnxPredictor(exported)
    predictor.set_image(smooth_image((300, 400, 3)))
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):  # points + padding: 2, 3, 4 points in all
        coords = np.concatenate(
            [rng.uniform(0, 256, (4, n, 2)), np.zeros((4, 1, 2))], axis=1
        ).astype(np.float32)
        labels = np.concatenate(
            [rng.integers(0, 2, (4, n)), -np.ones((4, 1))], axis=1
        ).astype(np.float32)
        feed = {
            "image_embeddings": predictor.get_image_embedding(),
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((1, 1, 64, 64), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([300, 400], np.float32),
        }
        masks, iou, low = single.run(None, feed)
        all_masks, all_iou, all_low = full.run(None, feed)
        score = all_iou + (n + 1 - 2.5) * np.array([1000, 0, 0, 0])
        best = np.argmax(score, axis=1)
        rows = np.arange(4)
        assert masks.shape == (4, 1, 300, 400)
        np.testing.assert_allclose(iou[:, 0], all_iou[rows, best], rtol=1e-5)
        np.testing.assert_allclose(
            low[:, 0], all_low[rows, best], rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ValueError, match="multimask_output=False"):
        predictor_single = OnnxPredictor(out)
        predictor_single.set_image_embedding(
            predictor.get_image_embedding(), (300, 400)
        )
        predictor_single.predict(point_coords=[[1, 1]], point_labels=[1])


@pytest.mark.integration
def test_saved_model_and_litert(official_and_ours, exported, tmp_path):
    """The SavedModel decoder gives the ONNX decoder's numbers; LiteRT
    writes the decoder and refuses the image encoder."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the exporters run on the TensorFlow backend")
    import onnxruntime as ort
    import tensorflow as tf

    from keras_sam.export import export_model

    _, model = official_and_ours
    written = export_model(
        model, tmp_path, format="saved_model", decoder_only=True
    )
    assert written == [tmp_path / "decoder_saved_model"]
    rng = np.random.default_rng(0)
    feed = {
        "image_embeddings": rng.normal(size=(1, 32, 16, 16)),
        "point_coords": rng.uniform(0, 256, (3, 2, 2)),
        "point_labels": np.array([[1, -1], [0, -1], [2, 3]]),
        "mask_input": rng.normal(size=(3, 1, 64, 64)),
        "has_mask_input": np.ones(1),
        "orig_im_size": np.array([200, 333]),
    }
    feed = {k: np.asarray(v, np.float32) for k, v in feed.items()}
    serve = tf.saved_model.load(str(written[0])).signatures["serve"]
    out = serve(**{k: tf.constant(v) for k, v in feed.items()})
    expected = ort.InferenceSession(exported / "decoder.onnx").run(None, feed)
    for name, value in zip(
        ("masks", "iou_predictions", "low_res_masks"), expected, strict=True
    ):
        helpers.assert_close(out[name].numpy(), value, helpers.PREDICTOR_RTOL)
    with pytest.raises(ValueError, match="decoder"):
        export_model(model, tmp_path, format="litert")
    written = export_model(model, tmp_path, format="litert", decoder_only=True)
    assert written[0].stat().st_size > 10_000
