"""SAMPromptEncoder: every ValueError path, and a fuzz test of its inputs."""

import re

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import note
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_sam.layers import SAMPromptEncoder
from keras_sam.layers.prompt_encoder import VALID_LABELS

TINY = dict(
    hidden_size=8,
    image_embedding_size=(2, 3),
    input_image_size=(32, 48),
    mask_in_channels=4,
)
C = 8
HE, WE = 2, 3
MASK_H, MASK_W = 4 * HE, 4 * WE
INPUT_NAMES = ("points", "labels", "boxes", "masks")


def make_encoder() -> SAMPromptEncoder:
    return SAMPromptEncoder(**TINY)


def zeros(*shape, dtype="float32") -> np.ndarray:
    return np.zeros(shape, dtype)


def core_message(error: BaseException) -> str:
    """The layer's own message, without the argument list that Keras appends
    to errors raised in `call` (that list names every argument, so matching
    on it would prove nothing)."""
    text = str(error)
    found = re.search(r"\x1b\[1m(.*?)\x1b\[0m", text, re.S)
    return found.group(1) if found else text


def names(message: str, name: str) -> bool:
    """Whether `message` names the input argument `name`."""
    return bool(re.search(rf"`{name}`|\b{name} batch\b", message))


# -- constructor ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(hidden_size=7), "hidden_size"),
        (dict(hidden_size=1), "hidden_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(hidden_size=-8), "hidden_size"),
        (dict(mask_in_channels=3), "mask_in_channels"),
        (dict(mask_in_channels=0), "mask_in_channels"),
        (dict(mask_in_channels=-4), "mask_in_channels"),
        (dict(image_embedding_size=0), "image_embedding_size"),
        (dict(image_embedding_size=-2), "image_embedding_size"),
        (dict(image_embedding_size=(0, 3)), "image_embedding_size"),
        (dict(image_embedding_size=(2, -3)), "image_embedding_size"),
        (dict(image_embedding_size=(2,)), "image_embedding_size"),
        (dict(image_embedding_size=(2, 3, 4)), "image_embedding_size"),
        (dict(image_embedding_size=2.5), "image_embedding_size"),
        (dict(image_embedding_size=None), "image_embedding_size"),
        (dict(image_embedding_size=("a", "b")), "image_embedding_size"),
        (dict(input_image_size=0), "input_image_size"),
        (dict(input_image_size=(32, 0)), "input_image_size"),
        (dict(input_image_size=(-32, 48)), "input_image_size"),
        (dict(input_image_size=(32,)), "input_image_size"),
        (dict(input_image_size=None), "input_image_size"),
        (dict(input_image_size="big"), "input_image_size"),
    ],
)
def test_constructor_rejects(kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        SAMPromptEncoder(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    "value, expected",
    [(5, (5, 5)), ((2, 3), (2, 3)), ([4, 6], (4, 6)), (np.int64(3), (3, 3))],
)
def test_constructor_accepts_int_or_pair(value, expected):
    encoder = SAMPromptEncoder(
        **{**TINY, "image_embedding_size": value, "input_image_size": value}
    )
    assert encoder.image_embedding_size == expected
    assert encoder.input_image_size == expected
    assert encoder.mask_input_size == (4 * expected[0], 4 * expected[1])


# -- call: static shape checks ---------------------------------------------

# id: (inputs as shapes, pattern naming the offending argument). "labels"
# shapes are given as int32 arrays, all others as float32.
SHAPE_ERRORS = {
    "points_rank_2": (dict(points=(3, 2), labels=(1, 3)), "`points`"),
    "points_rank_4": (dict(points=(1, 3, 2, 1), labels=(1, 3)), "`points`"),
    "points_last_dim_3": (dict(points=(1, 3, 3), labels=(1, 3)), "`points`"),
    "points_last_dim_1": (dict(points=(1, 3, 1), labels=(1, 3)), "`points`"),
    "points_without_labels": (dict(points=(1, 3, 2)), "`labels`"),
    "labels_without_points": (dict(labels=(1, 3)), "`labels`"),
    "labels_without_points_with_box": (
        dict(labels=(1, 2), boxes=(1, 1, 2, 2)),
        "`labels`",
    ),
    "labels_rank_1": (dict(points=(1, 3, 2), labels=(3,)), "`labels`"),
    "labels_rank_3": (dict(points=(1, 3, 2), labels=(1, 3, 1)), "`labels`"),
    "fewer_labels_than_points": (
        dict(points=(1, 3, 2), labels=(1, 2)),
        "`labels`",
    ),
    "more_labels_than_points": (
        dict(points=(2, 1, 2), labels=(2, 4)),
        "`labels`",
    ),
    "boxes_rank_3": (dict(boxes=(1, 2, 4)), "`boxes`"),
    "boxes_rank_2": (dict(boxes=(1, 4)), "`boxes`"),
    "boxes_rank_5": (dict(boxes=(1, 1, 2, 2, 1)), "`boxes`"),
    "boxes_three_corners": (dict(boxes=(1, 1, 3, 2)), "`boxes`"),
    "boxes_three_coordinates": (dict(boxes=(1, 1, 2, 3)), "`boxes`"),
    "masks_rank_4": (dict(masks=(1, MASK_H, MASK_W, 1)), "`masks`"),
    "masks_rank_6": (dict(masks=(1, 1, MASK_H, MASK_W, 1, 1)), "`masks`"),
    "masks_channels_3": (dict(masks=(1, 1, MASK_H, MASK_W, 3)), "`masks`"),
    "masks_channels_first": (dict(masks=(1, 1, 1, MASK_H, MASK_W)), "`masks`"),
    "masks_embedding_size": (dict(masks=(1, 1, HE, WE, 1)), "`masks`"),
    "masks_wrong_height": (
        dict(masks=(1, 1, MASK_H + 4, MASK_W, 1)),
        "`masks`",
    ),
    "masks_wrong_width": (dict(masks=(1, 1, MASK_H, MASK_H, 1)), "`masks`"),
    "masks_transposed": (dict(masks=(1, 1, MASK_W, MASK_H, 1)), "`masks`"),
    "batch_points_vs_labels": (
        dict(points=(2, 1, 2), labels=(3, 1)),
        r"points batch 2 and labels batch 3",
    ),
    "batch_points_vs_boxes": (
        dict(points=(2, 1, 2), labels=(2, 1), boxes=(3, 1, 2, 2)),
        r"points batch 2 and boxes batch 3",
    ),
    "batch_points_vs_masks": (
        dict(points=(2, 1, 2), labels=(2, 1), masks=(1, 1, MASK_H, MASK_W, 1)),
        r"points batch 2 and masks batch 1",
    ),
    "batch_boxes_vs_masks": (
        dict(boxes=(1, 1, 2, 2), masks=(2, 1, MASK_H, MASK_W, 1)),
        r"boxes batch 1 and masks batch 2",
    ),
}


def arrays_of(shapes: dict) -> dict:
    return {
        name: zeros(*shape, dtype="int32" if name == "labels" else "float32")
        for name, shape in shapes.items()
    }


def symbolic_of(shapes: dict) -> dict:
    return {
        name: keras.Input(
            batch_shape=shape,
            dtype="int32" if name == "labels" else "float32",
            name=name,
        )
        for name, shape in shapes.items()
    }


@pytest.mark.parametrize("case", sorted(SHAPE_ERRORS))
def test_shape_is_rejected(case):
    """Eagerly, on `keras.Input` tensors (functional use: the same static
    checks) and by `compute_output_shape`."""
    shapes, pattern = SHAPE_ERRORS[case]
    encoder = make_encoder()
    with pytest.raises(ValueError, match=pattern) as info:
        encoder(**arrays_of(shapes))
    assert re.search(pattern, core_message(info.value)), "eager"
    with pytest.raises(ValueError, match=pattern) as info:
        encoder(**symbolic_of(shapes))
    assert re.search(pattern, core_message(info.value)), "symbolic"
    with pytest.raises(ValueError, match=pattern):
        encoder.compute_output_shape(
            **{f"{name}_shape": shape for name, shape in shapes.items()}
        )


def test_unknown_dimensions_are_not_rejected_symbolically():
    """Dims that are None are unknown, not wrong; run-time batch sizes are
    then the caller's business."""
    encoder = make_encoder()
    out = encoder(
        points=keras.Input(batch_shape=(None, None, 2)),
        labels=keras.Input(batch_shape=(None, None), dtype="int32"),
        boxes=keras.Input(batch_shape=(None, 1, 2, 2)),
        masks=keras.Input(batch_shape=(None, None, None, None, 1)),
    )
    assert tuple(out["prompt_sparse_embeddings"].shape) == (None, None, C)
    assert tuple(out["prompt_dense_embeddings"].shape) == (None, HE, WE, C)
    assert tuple(out["prompt_dense_positional_embeddings"].shape) == (
        1,
        HE,
        WE,
        C,
    )


# -- call: eager value checks ------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [[[-2, 1]], [[1, 4]], [[0.5, 1.0]], [[1.0, 3.5]], [[-1, 5]]],
    ids=["minus_2", "4", "half", "3.5", "5"],
)
def test_call_rejects_label_values(labels):
    encoder = make_encoder()
    labels = np.asarray(labels)
    with pytest.raises(ValueError, match="`labels`") as info:
        encoder(points=zeros(1, 2, 2), labels=labels)
    assert names(core_message(info.value), "labels")


@pytest.mark.parametrize("label", VALID_LABELS)
@pytest.mark.parametrize("dtype", ["int32", "int64", "float32"])
def test_call_accepts_every_valid_label(label, dtype):
    encoder = make_encoder()
    out = encoder(
        points=np.full((1, 1, 2), 3.0, "float32"),
        labels=np.full((1, 1), label, dtype),
    )
    assert tuple(out["prompt_sparse_embeddings"].shape) == (1, 1, C)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=str)
@pytest.mark.parametrize("arg", ["points", "boxes", "masks"])
def test_call_rejects_non_finite_values(arg, bad):
    encoder = make_encoder()
    inputs = {
        "points": zeros(1, 2, 2),
        "labels": np.ones((1, 2), "int32"),
        "boxes": zeros(1, 1, 2, 2),
        "masks": zeros(1, 1, MASK_H, MASK_W, 1),
    }
    inputs[arg].reshape(-1)[-1] = bad
    with pytest.raises(ValueError, match=f"`{arg}`") as info:
        encoder(**inputs)
    assert names(core_message(info.value), arg)


def test_value_checks_are_skipped_symbolically():
    """Symbolic tensors hold no values: no value check, no error."""
    encoder = make_encoder()
    out = encoder(
        points=keras.Input(batch_shape=(1, 2, 2)),
        labels=keras.Input(batch_shape=(1, 2)),
    )
    assert tuple(out["prompt_sparse_embeddings"].shape) == (1, 2, C)


# -- empty inputs --------------------------------------------------------------

EMPTY_CASES = {
    "no_points": dict(points=(2, 0, 2), labels=(2, 0)),
    "no_boxes": dict(boxes=(2, 0, 2, 2)),
    "no_masks": dict(masks=(2, 0, MASK_H, MASK_W, 1)),
    "batch_0_points": dict(points=(0, 3, 2), labels=(0, 3)),
    "batch_0_boxes": dict(boxes=(0, 2, 2, 2)),
    "batch_0_no_masks": dict(masks=(0, 0, MASK_H, MASK_W, 1)),
    "batch_0_masks": dict(masks=(0, 2, MASK_H, MASK_W, 1)),
}


def expected_shapes(shapes: dict) -> dict:
    """The documented output shapes for valid input shapes."""
    given_batches = [
        shapes[n][0] for n in ("points", "boxes", "masks") if n in shapes
    ]
    batch = given_batches[0] if given_batches else 1
    tokens = 0
    if "points" in shapes:
        tokens += shapes["points"][1]
    if "boxes" in shapes:
        tokens += 2 * shapes["boxes"][1]
    dense_batch = batch
    if "masks" in shapes and shapes["masks"][1] > 0:
        dense_batch = batch * shapes["masks"][1]
    return {
        "prompt_sparse_embeddings": (batch, tokens, C),
        "prompt_dense_embeddings": (dense_batch, HE, WE, C),
        "prompt_dense_positional_embeddings": (1, HE, WE, C),
    }


@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_empty_inputs(case):
    shapes = EMPTY_CASES[case]
    encoder = make_encoder()
    out = encoder(**arrays_of(shapes))
    expected = expected_shapes(shapes)
    declared = encoder.compute_output_shape(
        **{f"{name}_shape": shape for name, shape in shapes.items()}
    )
    for key, shape in expected.items():
        assert tuple(out[key].shape) == shape, key
        assert tuple(declared[key]) == shape, key


# -- fuzz ----------------------------------------------------------------------

FINITE_COORDINATES = st.one_of(
    st.floats(-100.0, 100.0, width=32),
    st.sampled_from([0.0, -1.0, 31.5, 47.5, 1e6, -1e6]),
)
NON_FINITE = st.sampled_from([np.nan, np.inf, -np.inf])
ALL_LABELS = st.sampled_from([-2, -1, 0, 1, 2, 3, 4, 0.5])
# Most draws keep an input's shape; the rest corrupt it.
SHAPE_EDITS = st.sampled_from(
    ("keep",) * 12 + ("drop_batch", "add_axis", "dim")
)


@st.composite
def shape_for(draw, nominal: tuple, free_axes: dict) -> tuple[tuple, bool]:
    """`nominal`, or a corrupted version of it; returns (shape, corrupted).

    `free_axes` maps an axis that a "dim" edit may change to its required
    size.
    """
    edit = draw(SHAPE_EDITS)
    if edit == "drop_batch":
        return nominal[1:], True
    if edit == "add_axis":
        return nominal + (1,), True
    if edit == "dim" and free_axes:
        axis = draw(st.sampled_from(sorted(free_axes)))
        size = draw(st.integers(0, 16).filter(lambda s: s != free_axes[axis]))
        shape = list(nominal)
        shape[axis] = size
        return tuple(shape), True
    return nominal, False


@st.composite
def coordinates(draw, shape: tuple) -> np.ndarray:
    dtype = draw(st.sampled_from(["float32", "float64"]))
    values = draw(hnp.arrays(dtype, shape, elements=FINITE_COORDINATES))
    if values.size and draw(st.integers(0, 3)) == 0:
        index = draw(st.integers(0, values.size - 1))
        values.reshape(-1)[index] = draw(NON_FINITE)
    return values


@st.composite
def prompt_draws(draw):
    """Random valid and invalid inputs, with the arguments that were made
    invalid: `shape_bad` (a static check must fail) and `value_bad` (an
    eager value check must fail)."""
    batch = draw(st.integers(0, 3))
    n = draw(st.integers(0, 4))
    m = draw(st.integers(0, 2))
    k = draw(st.integers(0, 2))
    with_points = draw(st.booleans())
    with_labels = with_points != (draw(st.integers(0, 9)) == 0)
    with_boxes = draw(st.booleans())
    with_masks = draw(st.booleans())

    nominal = {}
    if with_points:
        nominal["points"] = ((batch, n, 2), {2: 2})
    if with_labels:
        nominal["labels"] = ((batch, n), {1: n} if with_points else {})
    if with_boxes:
        nominal["boxes"] = ((batch, m, 2, 2), {2: 2, 3: 2})
    if with_masks:
        nominal["masks"] = (
            (batch, k, MASK_H, MASK_W, 1),
            {2: MASK_H, 3: MASK_W, 4: 1},
        )

    shape_bad = set()
    if with_points and not with_labels:
        shape_bad |= {"points", "labels"}
    if with_labels and not with_points:
        shape_bad |= {"points", "labels"}
    shapes = {}
    for name, (shape, free_axes) in nominal.items():
        if draw(st.integers(0, 9)) == 0:  # maybe a different batch size
            other = draw(st.integers(0, 3).filter(lambda b: b != batch))
            shape = (other,) + shape[1:]
        shape, corrupted = draw(shape_for(shape, free_axes))
        if corrupted:
            shape_bad.add(name)
        shapes[name] = shape
    # Differing batch sizes (among inputs of the right rank) make the first
    # input and every input whose batch differs from it invalid.
    batches = {
        name: shape[0]
        for name, shape in shapes.items()
        if len(shape) == len(nominal[name][0])
    }
    if len(set(batches.values())) > 1:
        first = next(iter(batches.values()))
        shape_bad |= {n for n, b in batches.items() if b != first}
        shape_bad.add(next(iter(batches)))

    inputs = {}
    for name, shape in shapes.items():
        if name == "labels":
            if draw(st.integers(0, 3)) == 0:
                inputs[name] = draw(
                    hnp.arrays("float32", shape, elements=ALL_LABELS)
                )
            else:
                dtype = draw(st.sampled_from(["int32", "int64", "float32"]))
                inputs[name] = draw(
                    hnp.arrays(
                        dtype, shape, elements=st.sampled_from(VALID_LABELS)
                    )
                )
        elif name == "masks":
            seed = draw(st.integers(0, 2**32 - 1))
            scale = draw(st.sampled_from([1.0, 10.0, 1e6]))
            values = np.random.default_rng(seed).normal(0, scale, shape)
            values = values.astype(
                draw(st.sampled_from(["float32", "float64"]))
            )
            if values.size and draw(st.integers(0, 3)) == 0:
                index = draw(st.integers(0, values.size - 1))
                values.reshape(-1)[index] = draw(NON_FINITE)
            inputs[name] = values
        else:
            inputs[name] = draw(coordinates(shape))

    value_bad = set()
    for name, values in inputs.items():
        if name == "labels":
            if not np.isin(values, VALID_LABELS).all():
                value_bad.add(name)
        elif not np.isfinite(values).all():
            value_bad.add(name)
    return inputs, shape_bad, value_bad


def check_names_one_of(error: ValueError, candidates: set) -> None:
    message = core_message(error)
    assert any(names(message, name) for name in candidates), (
        f"message names none of {sorted(candidates)}: {message}"
    )


def test_fuzz_inputs():
    """Every draw either gives finite outputs of the documented shapes, equal
    to `compute_output_shape`, or raises a ValueError that names an argument
    the draw made invalid. Any other exception fails."""
    encoder = make_encoder()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
        ],
    )
    @given(draw=prompt_draws())
    def check(draw):
        inputs, shape_bad, value_bad = draw
        shapes = {name: x.shape for name, x in inputs.items()}
        note(f"shapes={shapes} shape_bad={shape_bad} value_bad={value_bad}")
        shape_kwargs = {f"{name}_shape": s for name, s in shapes.items()}

        if shape_bad:
            with pytest.raises(ValueError) as info:
                encoder.compute_output_shape(**shape_kwargs)
            check_names_one_of(info.value, shape_bad)
            with pytest.raises(ValueError) as info:
                encoder(**inputs)
            check_names_one_of(info.value, shape_bad)
            return

        declared = encoder.compute_output_shape(**shape_kwargs)
        expected = expected_shapes(shapes)
        assert {k: tuple(v) for k, v in declared.items()} == expected
        if value_bad:
            with pytest.raises(ValueError) as info:
                encoder(**inputs)
            check_names_one_of(info.value, value_bad)
            return

        out = encoder(**inputs)
        assert set(out) == set(expected)
        for key, shape in expected.items():
            value = keras.ops.convert_to_numpy(out[key])
            assert value.shape == shape, key
            assert np.isfinite(value).all(), key

    check()
