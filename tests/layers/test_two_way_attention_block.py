import numpy as np
import pytest
import torch

from keras_sam.layers import TwoWayAttentionBlock
from support.reference import official
from tests import helpers
from tests.layers import _subparity


@pytest.mark.parity
@pytest.mark.parametrize("index", [0, 1])
def test_matches_official_block(index):
    decoder = official.make_mask_decoder(
        transformer_dim=32, depth=2, mlp_dim=24, num_heads=4
    )
    ref = decoder.transformer.layers[index]
    ours = TwoWayAttentionBlock(
        hidden_size=32,
        num_heads=4,
        intermediate_dim=24,
        skip_first_layer_pe=index == 0,
    )
    rows = _subparity.decoder_rows(
        2, f"transformer.layers.{index}.", f"transformer/layer_{index}/"
    )
    _subparity.load(ours, ref, rows)
    rng = np.random.default_rng(index)
    args = [
        rng.normal(size=shape).astype("float32")
        for shape in ((2, 5, 32), (2, 12, 32), (2, 5, 32), (2, 12, 32))
    ]
    with torch.no_grad():
        ref_q, ref_k = ref(*(torch.from_numpy(a) for a in args))
    q, k = ours(*args)
    helpers.assert_close(q, official.to_numpy(ref_q), helpers.DECODER_RTOL)
    helpers.assert_close(k, official.to_numpy(ref_k), helpers.DECODER_RTOL)


def test_keras_conventions(tmp_path):
    rng = np.random.default_rng(0)
    shapes = dict(
        queries=(2, 3, 16),
        keys=(2, 8, 16),
        query_pe=(2, 3, 16),
        key_pe=(2, 8, 16),
    )
    inputs = {
        k: rng.normal(size=s).astype("float32") for k, s in shapes.items()
    }
    helpers.run_layer_test(
        TwoWayAttentionBlock,
        dict(hidden_size=16, num_heads=2, intermediate_dim=12),
        inputs,
        expected_num_trainable_weights=36,
        tmp_path=tmp_path,
    )
