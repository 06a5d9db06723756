import numpy as np
import pytest
import torch

from keras_sam.layers import TwoWayTransformer
from support.reference import official
from tests import helpers
from tests.layers import _subparity


@pytest.mark.parity
def test_matches_official_transformer():
    decoder = official.make_mask_decoder(
        transformer_dim=32, depth=3, mlp_dim=24, num_heads=4
    )
    ref = decoder.transformer
    ours = TwoWayTransformer(
        num_layers=3, hidden_size=32, num_heads=4, intermediate_dim=24
    )
    rows = _subparity.decoder_rows(3, "transformer.", "transformer/")
    _subparity.load(ours, ref, rows)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 3, 5, 32)).astype("float32")
    pe = rng.normal(size=(2, 3, 5, 32)).astype("float32")
    tokens = rng.normal(size=(2, 7, 32)).astype("float32")
    with torch.no_grad():
        ref_q, ref_k = ref(
            torch.from_numpy(image).permute(0, 3, 1, 2),
            torch.from_numpy(pe).permute(0, 3, 1, 2),
            torch.from_numpy(tokens),
        )
    q, k = ours(image, pe, tokens)
    helpers.assert_close(q, official.to_numpy(ref_q), helpers.DECODER_RTOL)
    helpers.assert_close(k, official.to_numpy(ref_k), helpers.DECODER_RTOL)
    assert len(ours.trainable_weights) == len(list(ref.parameters()))


def test_keras_conventions(tmp_path):
    rng = np.random.default_rng(0)
    inputs = dict(
        image_embedding=rng.normal(size=(2, 3, 4, 16)).astype("float32"),
        image_pe=rng.normal(size=(2, 3, 4, 16)).astype("float32"),
        point_embedding=rng.normal(size=(2, 5, 16)).astype("float32"),
    )
    helpers.run_layer_test(
        TwoWayTransformer,
        dict(num_layers=2, hidden_size=16, num_heads=2, intermediate_dim=12),
        inputs,
        expected_num_trainable_weights=2 * 36 + 10,
        tmp_path=tmp_path,
    )


def test_rejects_zero_layers():
    with pytest.raises(ValueError, match="num_layers"):
        TwoWayTransformer(
            num_layers=0, hidden_size=16, num_heads=2, intermediate_dim=8
        )
