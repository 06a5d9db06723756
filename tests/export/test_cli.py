"""`keras-sam export`: what it refuses before the model loads (the
exports themselves: `test_exported.py`)."""

import pytest

from keras_sam.cli import main


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
