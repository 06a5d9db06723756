import numpy as np
import pytest
import torch

from keras_sam.layers import MultiHeadAttentionWithDownsampling
from tests import helpers
from tests.layers import _subparity
from tests.reference import official


@pytest.mark.parity
@pytest.mark.parametrize(
    "name,keras_name,rate",
    [
        ("self_attn", "self_attention", 1),
        ("cross_attn_token_to_image", "cross_attention_token_to_image", 2),
    ],
)
def test_matches_official_attention(name, keras_name, rate):
    decoder = official.make_mask_decoder(
        transformer_dim=32, depth=1, mlp_dim=16, num_heads=4
    )
    ref = getattr(decoder.transformer.layers[0], name)
    ours = MultiHeadAttentionWithDownsampling(
        hidden_size=32, num_heads=4, downsample_rate=rate
    )
    rows = _subparity.decoder_rows(
        1, f"transformer.layers.0.{name}.", f"transformer/layer_0/{keras_name}/"
    )
    _subparity.load(ours, ref, rows)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 5, 32)).astype("float32")
    k = rng.normal(size=(2, 9, 32)).astype("float32")
    v = rng.normal(size=(2, 9, 32)).astype("float32")
    with torch.no_grad():
        expected = official.to_numpy(
            ref(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v))
        )
    helpers.assert_close(ours(q, k, v), expected, helpers.DECODER_RTOL)


def test_keras_conventions(tmp_path):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 3, 16)).astype("float32")
    kv = rng.normal(size=(2, 6, 16)).astype("float32")
    helpers.run_layer_test(
        MultiHeadAttentionWithDownsampling,
        dict(hidden_size=16, num_heads=2, downsample_rate=2),
        dict(query=q, key=kv, value=kv),
        expected_num_trainable_weights=8,
        tmp_path=tmp_path,
    )


def test_rejects_heads_not_dividing_width():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttentionWithDownsampling(
            hidden_size=32, num_heads=3, downsample_rate=2
        )


@pytest.mark.parametrize("shared", ["keys", "query"])
def test_batch_one_side_equals_a_repeat(shared):
    """Keys of batch 1 (folded queries) or a query of batch 1 (broadcast)
    give what repeating that side to the other batch gives."""
    attn = MultiHeadAttentionWithDownsampling(
        hidden_size=16, num_heads=2, downsample_rate=2
    )
    rng = np.random.default_rng(1)
    q = rng.normal(size=(3, 5, 16)).astype("float32")
    kv = rng.normal(size=(3, 7, 16)).astype("float32")
    if shared == "keys":
        kv = kv[:1]
        out = attn(q, kv, kv)
        full = attn(q, np.repeat(kv, 3, 0), np.repeat(kv, 3, 0))
    else:
        q = q[:1]
        out = attn(q, kv, kv)
        full = attn(np.repeat(q, 3, 0), kv, kv)
    assert tuple(out.shape) == (3, q.shape[1], 16)
    helpers.assert_close(out, helpers.to_numpy(full), helpers.SAME_BACKEND_RTOL)
