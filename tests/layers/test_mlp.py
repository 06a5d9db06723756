import numpy as np
import pytest
import torch

from keras_sam.layers import MLP
from support.reference import official
from tests import helpers
from tests.layers import _subparity


@pytest.mark.parity
def test_matches_official_hypernetwork_mlp():
    ref = official.make_mask_decoder(
        transformer_dim=32, depth=1, mlp_dim=16, num_heads=2
    ).output_hypernetworks_mlps[1]
    ours = MLP(hidden_dim=32, output_dim=4, num_layers=3)
    ours.build((None, 32))
    rows = _subparity.decoder_rows(
        1, "output_hypernetworks_mlps.1.", "output_hypernetworks_mlp_1/"
    )
    _subparity.load(ours, ref, rows)
    x = np.random.default_rng(0).normal(size=(5, 32)).astype("float32")
    with torch.no_grad():
        expected = official.to_numpy(ref(torch.from_numpy(x)))
    helpers.assert_close(ours(x), expected, helpers.DECODER_RTOL)


def test_keras_conventions(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 7)).astype("float32")
    out = helpers.run_layer_test(
        MLP,
        dict(hidden_dim=5, output_dim=2, num_layers=3),
        dict(x=x),
        expected_num_trainable_weights=6,
        tmp_path=tmp_path,
        build_kwargs=dict(input_shape=(None, 7)),
    )
    assert out.shape == (3, 2)


@pytest.mark.parametrize("arg", ["hidden_dim", "output_dim", "num_layers"])
def test_rejects_non_positive(arg):
    kwargs = dict(hidden_dim=4, output_dim=2, num_layers=2)
    kwargs[arg] = 0
    with pytest.raises(ValueError, match=arg):
        MLP(**kwargs)
