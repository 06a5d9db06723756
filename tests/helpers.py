"""Test harness and tolerances shared by the test suite.

Tolerances are relative max errors, `max|ours - ref| / max|ref|`; each
comment gives the worst error measured when the tolerance was set.
"""

import importlib.util
import json
from pathlib import Path

import keras
import numpy as np

# Same backend, eager vs compiled vs reloaded. Measured: 0 (reload) and
# up to ~2e-7 (XLA / torch fusion).
SAME_BACKEND_RTOL = 1e-5

# Ours vs official PyTorch SAM, float32 CPU.
# Prompt encoder: measured worst 4.2e-6 (TensorFlow; sin/cos of phases up
# to ~20 rad carry float32 rounding of ~2e-6), 2.1e-6 (torch), 4.1e-6 (JAX).
PROMPT_ENCODER_RTOL = 1e-5
# Decoder mask logits and IoU: measured worst 2.2e-6 (TensorFlow), 1.4e-6
# (JAX), 1.1e-6 (torch), over the ViT-B and a non-default config, with the
# attention's cheaper product order (scripts/faithfulness_table.py).
DECODER_RTOL = 1e-5
# Image encoder (small configs): measured worst 8.5e-7 (JAX), 4.9e-7 (torch),
# 4.4e-7 (TensorFlow).
IMAGE_ENCODER_RTOL = 1e-5
# mixed_bfloat16 vs float32, same weights, tiny image encoder: a sanity
# bound, not a parity tolerance. Measured worst: 7.3e-3 (JAX, TensorFlow).
BFLOAT16_RTOL = 5e-2
# A Keras layer fed the transformed torch weights vs the torch op itself,
# float32 CPU. Measured worst: 8.8e-8 (identity: LayerNorm + Embedding, JAX
# and TF); linear 6.8e-8; conv2d and conv2d_transpose 0 (all backends).
TRANSFORM_RTOL = 1e-5
# Predictor end to end (image encoder + prompts + decoder), low-res logits
# and scores: issue 4 asks for 1e-4.
PREDICTOR_RTOL = 1e-4
# Our decoder vs keras-hub's, same weights (a random-weight KerasHub preset
# whose hypernetwork outputs are one channel, so masks are small and carry
# the attention's float32 rounding): measured worst 5.7e-5 (TensorFlow).
KERAS_HUB_DECODER_RTOL = 1e-4
# Thresholded masks may differ only where the official logit is this close
# to the 0.0 threshold.
MASK_LOGIT_MARGIN = 1e-3


# A tiny SAM on 64x64 inputs (4x4 embedding) for fit/evaluation tests.
TINY_64_ENCODER = dict(
    hidden_size=32,
    num_layers=2,
    intermediate_dim=64,
    num_heads=2,
    global_attention_layer_indices=(1,),
    image_shape=(64, 64, 3),
    patch_size=16,
    num_output_channels=32,
    window_size=4,
)
TINY_64_PROMPT = dict(
    hidden_size=32, image_embedding_size=(4, 4), input_image_size=(64, 64)
)
TINY_64_DECODER = dict(
    hidden_size=32,
    num_layers=2,
    intermediate_dim=64,
    num_heads=2,
    embedding_dim=32,
)


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def rel_max_err(ours, ref, min_scale: float = 1e-12) -> float:
    """The largest absolute difference over the largest `|ref|` (at least
    `min_scale`: for quantities of a known order, so that a reference that
    happens to be near 0 does not turn rounding into a large ratio)."""
    ours, ref = to_numpy(ours).astype(np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if ref.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(ref))), min_scale)
    return float(np.max(np.abs(ours - ref))) / scale


def assert_close(
    ours, ref, rtol: float, what: str = "", min_scale: float = 1e-12
) -> float:
    err = rel_max_err(ours, ref, min_scale)
    assert err <= rtol, f"{what}: relative max error {err:.3g} > {rtol:.0e}"
    return err


def count_params(weights) -> int:
    return int(sum(np.prod(v.shape) for v in weights))


def _outputs_numpy(outputs):
    return keras.tree.map_structure(to_numpy, outputs)


def _assert_same_structure_close(a, b, rtol, what):
    flat_a, flat_b = keras.tree.flatten(a), keras.tree.flatten(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        assert_close(x, y, rtol, what)


def run_layer_test(
    layer_cls,
    init_kwargs: dict,
    call_kwargs: dict,
    *,
    expected_num_trainable_weights: int,
    expected_num_non_trainable_weights: int = 0,
    tmp_path=None,
    compiled_rtol: float = SAME_BACKEND_RTOL,
    build_kwargs: dict | None = None,
):
    """The checks every keras-sam layer must pass (after keras'
    `run_layer_test`).

    - `build()` alone creates every variable, in the expected counts;
    - `compute_output_shape`, symbolic (functional) shapes and eager shapes
      agree;
    - config through JSON and back, and `.keras` save/load, give identical
      outputs;
    - a compiled `predict` of a functional model equals eager.

    Returns the eager outputs as NumPy.
    """
    build_kwargs = build_kwargs or {}
    layer = layer_cls(**init_kwargs)
    layer.build(**build_kwargs)
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == (
        expected_num_non_trainable_weights
    )

    eager = _outputs_numpy(layer(**call_kwargs))

    # Shapes: compute_output_shape == symbolic == eager.
    shapes = {f"{k}_shape": tuple(np.shape(v)) for k, v in call_kwargs.items()}
    if len(shapes) == 1:  # single-input layers take the shape positionally
        declared = layer.compute_output_shape(*shapes.values())
    else:
        declared = layer.compute_output_shape(**shapes)
    symbolic_inputs = {
        k: keras.Input(batch_shape=np.shape(v), dtype=str(np.asarray(v).dtype))
        for k, v in call_kwargs.items()
    }
    symbolic = layer(**symbolic_inputs)
    if isinstance(declared, dict):
        triples = [(declared[k], symbolic[k], eager[k]) for k in declared]
    elif declared and isinstance(declared[0], tuple):  # several outputs
        triples = list(zip(declared, symbolic, eager, strict=True))
    else:
        triples = [(declared, symbolic, eager)]
    for d, s, e in triples:
        _assert_shapes_equal(d, s.shape, e)

    # Config through JSON, same weights, same outputs.
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    clone = keras.saving.deserialize_keras_object(config)
    if not clone.built:
        clone.build(**build_kwargs)
    clone.set_weights(layer.get_weights())
    _assert_same_structure_close(
        _outputs_numpy(clone(**call_kwargs)), eager, 0.0, "from_config"
    )

    # Functional model: compiled predict == eager; .keras round trip.
    model = keras.Model(symbolic_inputs, symbolic)
    batch = {k: np.asarray(v) for k, v in call_kwargs.items()}
    batch_size = next(iter(batch.values())).shape[0]
    predicted = model.predict(batch, batch_size=batch_size, verbose=0)
    _assert_same_structure_close(predicted, eager, compiled_rtol, "predict")
    if tmp_path is not None:
        path = str(tmp_path / "layer.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        _assert_same_structure_close(
            _outputs_numpy(reloaded(batch)), eager, 0.0, ".keras reload"
        )
    return eager


def _assert_shapes_equal(declared, symbolic, eager):
    declared, symbolic = tuple(declared), tuple(symbolic)
    assert declared == symbolic == tuple(eager.shape), (
        declared,
        symbolic,
        eager.shape,
    )


def load_script(name: str):
    """`scripts/<name>.py` imported as a module (scripts are not a package)."""
    path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
