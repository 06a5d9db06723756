import numpy as np
import pytest
import torch

from keras_sam.layers import MultiHeadAttentionWithDownsampling
from support.reference import official
from tests import helpers
from tests.layers import _subparity


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


@pytest.mark.parity
@pytest.mark.parametrize(
    "path,num_queries,num_keys,query_batch",
    [
        ("few_keys", 40, 3, 2),  # image-to-token
        ("few_keys", 40, 3, 1),  # ... with a shared (batch-1) image
        ("few_queries", 3, 40, 2),  # token-to-image
    ],
)
def test_reordered_products_match_official(
    path, num_queries, num_keys, query_batch
):
    """The folded product orders (chosen by multiply-add count) give the
    official attention's output."""
    decoder = official.make_mask_decoder(
        transformer_dim=32, depth=1, mlp_dim=16, num_heads=2
    )
    name = "cross_attn_token_to_image"
    ref = getattr(decoder.transformer.layers[0], name)
    ours = MultiHeadAttentionWithDownsampling(
        hidden_size=32, num_heads=2, downsample_rate=2
    )
    rows = _subparity.decoder_rows(
        1,
        f"transformer.layers.0.{name}.",
        "transformer/layer_0/cross_attention_token_to_image/",
    )
    _subparity.load(ours, ref, rows)
    assert ours._cheapest_path(num_queries, num_keys, query_batch, 2) == path
    rng = np.random.default_rng(3)
    q = rng.normal(size=(query_batch, num_queries, 32)).astype("float32")
    k = rng.normal(size=(2, num_keys, 32)).astype("float32")
    v = rng.normal(size=(2, num_keys, 32)).astype("float32")
    # Biases away from zero, so that their folding is exercised.
    for dense in (ours.query_proj, ours.key_proj, ours.value_proj):
        dense.bias.assign(rng.normal(size=dense.bias.shape).astype("float32"))
    for module, dense in zip(
        (ref.q_proj, ref.k_proj, ref.v_proj),
        (ours.query_proj, ours.key_proj, ours.value_proj),
        strict=True,
    ):
        module.bias.data = torch.from_numpy(helpers.to_numpy(dense.bias))
    with torch.no_grad():
        expected = official.to_numpy(
            ref(
                torch.from_numpy(np.repeat(q, 2 // query_batch, 0)),
                torch.from_numpy(k),
                torch.from_numpy(v),
            )
        )
    helpers.assert_close(ours(q, k, v), expected, helpers.DECODER_RTOL)


def test_plain_order_for_small_inputs_and_other_dtypes():
    attn = MultiHeadAttentionWithDownsampling(
        hidden_size=256, num_heads=8, downsample_rate=2
    )
    assert attn._cheapest_path(4096, 7) == "few_keys"
    assert attn._cheapest_path(7, 4096) == "few_queries"
    assert attn._cheapest_path(7, 7) == "standard"
    assert attn._cheapest_path(None, 7) == "standard"
    # A shared image's query projection is made once: for 64 prompts the
    # folded order saves too little in the first block.
    assert attn._cheapest_path(4096, 7, 1, 64) == "standard"
    assert attn._cheapest_path(4096, 7, 1, 1) == "few_keys"
    assert attn._cheapest_path(4096, 7, 64, 64) == "few_keys"
    assert attn._cheapest_path(4096, 7, None, 64) == "few_keys"
    # 448 folded queries (64 prompts x 7 tokens) on one shared image.
    assert attn._cheapest_path(448, 4096) == "standard"
    half = MultiHeadAttentionWithDownsampling(
        hidden_size=256, num_heads=8, downsample_rate=2, dtype="mixed_float16"
    )
    assert half._cheapest_path(4096, 7) == "standard"
