"""Both layers together: gradients, fit(), mixed precision."""

import keras
import numpy as np
import pytest

from keras_sam.layers import SAMMaskDecoder
from keras_sam.layers import SAMPromptEncoder
from tests import helpers

ENCODER = dict(
    hidden_size=32, image_embedding_size=(4, 6), input_image_size=(64, 96)
)
DECODER = dict(
    hidden_size=32,
    num_layers=2,
    intermediate_dim=48,
    num_heads=2,
    embedding_dim=32,
)


def build_model():
    """Functional model: image embedding + one point -> all masks."""
    image = keras.Input((4, 6, 32), name="image_embeddings")
    points = keras.Input((2, 2), name="points")
    labels = keras.Input((2,), dtype="int32", name="labels")
    encoder = SAMPromptEncoder(**ENCODER)
    decoder = SAMMaskDecoder(**DECODER)
    prompts = encoder(points=points, labels=labels)
    out = decoder(image_embeddings=image, **prompts)
    return keras.Model([image, points, labels], out)


def fixed_batch(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    x = [
        rng.normal(size=(batch, 4, 6, 32)).astype("float32"),
        rng.uniform(0, 64, (batch, 2, 2)).astype("float32"),
        np.tile(np.array([[1, -1]], "int32"), (batch, 1)),
    ]
    y = {
        "masks": (rng.uniform(size=(batch, 4, 16, 24)) > 0.5).astype("float32"),
        "iou_pred": rng.uniform(size=(batch, 4)).astype("float32"),
    }
    return x, y


def test_fit_lowers_the_loss():
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"masks": "mse", "iou_pred": "mse"},
    )
    # Keras' TensorFlow trainer would build the optimizer inside the first
    # trace of the training step and so trace it twice (as keras_sam.SAM's
    # fit avoids; see SAMTrainer._build_optimizer).
    model.optimizer.build(model.trainable_variables)
    x, y = fixed_batch()
    before = model.evaluate(x, y, verbose=0)[0]
    model.fit(x, y, epochs=30, batch_size=4, verbose=0)
    after = model.evaluate(x, y, verbose=0)[0]
    assert after < 0.5 * before, (before, after)


def test_every_trainable_weight_gets_a_gradient():
    model = build_model()
    x, y = fixed_batch()
    grads = _gradients(model, x, y)
    names = [v.path for v in model.trainable_weights]
    # The not-a-point embedding is used (label -1); the box corner and
    # background embeddings are not, and the mask downscaler not either.
    unused = ("background_point_embed", "corner_embed", "mask_downscaler")
    for name, grad in zip(names, grads, strict=True):
        if any(u in name for u in unused):
            continue
        assert np.any(helpers.to_numpy(grad) != 0), name


def _gradients(model, x, y):
    backend = keras.backend.backend()
    weights = model.trainable_weights

    y = {k: keras.ops.convert_to_tensor(v) for k, v in y.items()}

    def loss_fn():
        out = model(x, training=True)
        return keras.ops.mean((out["masks"] - y["masks"]) ** 2) + (
            keras.ops.mean((out["iou_pred"] - y["iou_pred"]) ** 2)
        )

    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, [w.value for w in weights])
    if backend == "torch":
        loss = loss_fn()
        loss.backward()
        return [w.value.grad for w in weights]
    import jax

    # Stateless JAX gradient through Keras' stateless scope.
    def stateless(values):
        mapping = list(zip(weights, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return loss_fn()

    # Compiled: op-by-op JAX autodiff of the decoder takes a minute.
    return jax.jit(jax.grad(stateless))([w.value for w in weights])


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
    x, _ = fixed_batch(batch=2)
    keras.utils.set_random_seed(1)
    reference_model = build_model()
    reference = reference_model.predict(x, verbose=0)

    keras.config.set_dtype_policy(policy)
    model = build_model()
    model.set_weights(reference_model.get_weights())
    out = model(x)
    compute = policy.split("_")[1]
    for key in ("masks", "iou_pred"):
        assert keras.backend.standardize_dtype(out[key].dtype) == compute
    assert all(v.dtype == "float32" for v in model.weights)
    masks = helpers.to_numpy(keras.ops.cast(out["masks"], "float32"))
    assert np.all(np.isfinite(masks))
    ref_masks = reference["masks"]
    # Random weights put many logits near 0, where 8-bit mantissas flip the
    # sign; the IoU is taken over pixels whose float32 logit is not within
    # 2% of the largest one. Measured: IoU >= 0.99 on every backend, and
    # 0.947 (TensorFlow bf16) if those pixels were counted.
    confident = np.abs(ref_masks) > 0.02 * np.abs(ref_masks).max()
    ours_bin, ref_bin = masks[confident] > 0, ref_masks[confident] > 0
    iou = np.sum(ours_bin & ref_bin) / max(np.sum(ours_bin | ref_bin), 1)
    print(
        f"{policy}: mask IoU {iou:.4f}, rel err "
        f"{helpers.rel_max_err(masks, ref_masks):.3g}"
    )
    assert iou >= 0.98, iou
