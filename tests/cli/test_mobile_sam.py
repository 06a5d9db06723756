"""`keras-sam segment --checkpoint mobile_sam.pt`: a MobileSAM file on the
command line, detected and run like any SAM checkpoint."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from keras_sam.inference.predictor import SAMPredictor
from keras_sam.models.sam import SAM
from support import fixtures as tp
from support.reference import mobile_sam as reference
from tests.cli.helpers import call

pytestmark = pytest.mark.integration


def test_segment_with_a_mobile_sam_checkpoint(tmp_path):
    ref = reference.make_mobile_sam(reference.SMALL, seed=0)
    checkpoint = tmp_path / "mobile_sam.pt"
    torch.save(ref.state_dict(), checkpoint)
    image_path = tmp_path / "photo.png"
    Image.fromarray(tp.smooth_image()).save(image_path)
    out = tmp_path / "seg"
    result = call(
        "segment",
        image_path,
        "--box",
        "120,80,500,420",
        "--checkpoint",
        checkpoint,
        "--multimask",
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert len(summary["masks"]) == 3
    predictor = SAMPredictor(SAM.from_checkpoint(checkpoint))
    predictor.set_image(tp.smooth_image())
    masks, scores, _ = predictor.predict(
        box=np.array([120.0, 80.0, 500.0, 420.0])
    )
    for i, entry in enumerate(summary["masks"]):
        png = np.asarray(Image.open(entry["file"])) > 127
        np.testing.assert_array_equal(png, masks[i])
        assert entry["score"] == pytest.approx(float(scores[i]), rel=1e-5)

    info = call("info", checkpoint)
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["format"] == "mobile_sam"
    assert described["architecture"]["image_encoder"]["hidden_sizes"] == list(
        reference.SMALL["hidden_sizes"]
    )
