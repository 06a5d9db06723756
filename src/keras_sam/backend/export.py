"""TensorFlow side of the exporters (`keras_sam.export`).

Every export format runs on the TensorFlow backend: ONNX through `tf2onnx`,
the SavedModel through Keras' own `model.export`, LiteRT through
TensorFlow's converter. This module holds the graph pieces that need sizes
known only at run time (the picture's size), which `keras.ops` cannot
express, and the conversions.
"""

import contextlib
import os

import keras
import numpy as np

EXPORT_BACKEND = "tensorflow"
# Powers of two as int64, for shifts by a tensor (LiteRT has no int64
# shift among its builtins).
_POW2 = np.array([1 << i for i in range(63)], np.int64)


def check_backend(what: str) -> None:
    """Raise a RuntimeError unless Keras runs on TensorFlow."""
    backend = keras.backend.backend()
    if backend != EXPORT_BACKEND:
        raise RuntimeError(
            f"{what} needs the TensorFlow backend (KERAS_BACKEND=tensorflow, "
            "or `keras-sam --backend tensorflow`). Received: Keras backend "
            f"{backend!r}"
        )


def resized_size(size, long_side: int):
    """`(..., 2)` int32 `(h, w)` of pictures of runtime sizes `size`
    (float `(..., 2)`, H, W) once their long side is resized to
    `long_side`: the predictor's `int(x * (long_side * 1.0 / max) + 0.5)`
    in float64, to the last bit, computed in int64 (LiteRT's builtins have
    no float64 arithmetic).

    The rounded value is `floor(x L / M + 1/2)` exactly, except where
    `x L / M` is a half-integer `k + 1/2`: there the float64 scale
    `s = fl(L / M)`, if rounded down, can bring `fl(x s)` below `k + 1/2`
    and the result to `k` (e.g. 147 of 25088 at L = 256). That happens
    when `x (L / M - s)` exceeds half a float64 ulp of `k + 1/2`, which is
    decided with the remainder `rho = L 2^P mod M` of `s = floor(L 2^P /
    M) / 2^P` (53 bits) and the exponents of `L / M` and `k + 1/2`. Exact
    for sides below 2^29 (`orig_im_size` is float32: below 2^24 anyway).
    """
    import tensorflow as tf

    pow2 = tf.constant(_POW2)
    x = tf.cast(size, tf.int64)  # (..., 2)
    m = tf.reduce_max(x, -1, keepdims=True)  # (..., 1)
    scale_num = tf.constant(long_side, tf.int64)
    # floor(x L / M + 1/2) as an integer division; a zero remainder is a
    # half-integer x L / M = k + 1/2.
    num = 2 * x * scale_num + m
    rem = tf.math.floormod(num, 2 * m)
    rounded = _exact_quotient(num - rem, 2 * m)
    half = tf.equal(rem, 0)
    k = rounded - 1
    # F = floor(log2(L / M)): the exponent of s; s keeps P = 52 - F bits
    # after the binary point.
    up = _count(m[..., None] * pow2[1:32] <= scale_num)
    down = _count(scale_num * pow2[:32] < m[..., None])
    f = up - down
    p = tf.cast(52 - f, tf.int32)
    # rho = L 2^P mod M by square-and-multiply (P < 128; products < 2^62).
    rho = tf.math.floormod(scale_num, m)
    square = tf.math.floormod(tf.constant(2, tf.int64), m)
    for i in range(7):
        bit = tf.equal(tf.math.floormod(tf.math.floordiv(p, 2**i), 2), 1)
        rho = tf.where(bit, tf.math.floormod(rho * square, m), rho)
        square = tf.math.floormod(square * square, m)
    # s rounded down when the dropped part rho / M is below one half.
    down_rounded = 2 * rho < m
    # E = floor(log2(k + 1/2)); x (L / M - s) = x rho / (M 2^P) against
    # half an ulp of k + 1/2, 2^(E - 53), cleared of powers of two:
    # x rho 8 > 2 M 2^(E - F + 1). For k = 0, below 1/2 the ulps halve and
    # fl(x s) + 0.5 rounds to even: the result drops only from 3/4 ulp on.
    e = _count(pow2[1:32] <= (2 * k + 1)[..., None]) - 1
    lhs = x * rho * 8
    rhs = m * tf.gather(pow2, tf.maximum(e - f + 1, 0))
    below = tf.where(tf.equal(k, 0), lhs >= 3 * rhs, lhs > 2 * rhs)
    return tf.cast(tf.where(half & down_rounded & below, k, rounded), tf.int32)


def _count(condition):
    """The number of true entries along the last axis, int64."""
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(condition, tf.int64), -1)


def _exact_quotient(a, b):
    """`a / b` for int64 `a` a multiple of `b` and a quotient below 2^21,
    through float32 (LiteRT's builtins have no int64 division): the float
    errors stay below 1/2 of the quotient's unit."""
    import tensorflow as tf

    q = tf.cast(a, tf.float32) / tf.cast(b, tf.float32)
    return tf.cast(tf.round(q), tf.int64)


def upscale_masks(low_res, orig_size, padded_size: tuple[int, int]):
    """Low-res logits `(B, M, h, w)` to the picture's size `(B, M, H, W)`.

    The official post-processing with runtime sizes: bilinear
    (half-pixel, no antialias: PyTorch's `align_corners=False`) to the
    padded model input, crop to the resized picture, bilinear to the
    original `orig_size` (float `(2,)`, H, W).
    """
    import tensorflow as tf

    x = tf.transpose(low_res, (0, 2, 3, 1))  # (B, h, w, M)
    x = tf.image.resize(x, padded_size, method="bilinear", antialias=False)
    kept = resized_size(orig_size, max(padded_size))
    x = x[:, : kept[0], : kept[1], :]
    original = tf.cast(orig_size, tf.int32)
    x = tf.image.resize(x, original, method="bilinear", antialias=False)
    return tf.transpose(x, (0, 3, 1, 2))  # (B, M, H, W)


def normalize_and_pad(image, padded_size: tuple[int, int], mean, std):
    """uint8 `(h, w, 3)` resized picture -> float32 `(1, S_h, S_w, 3)`:
    `(x - mean) / std` per channel, zeros bottom/right (the predictor's
    `transforms.normalize_and_pad`, in the graph)."""
    import tensorflow as tf

    mean = tf.constant(np.asarray(mean, np.float32))
    std = tf.constant(np.asarray(std, np.float32))
    x = (tf.cast(image, tf.float32) - mean) / std
    shape = tf.shape(x)
    pad = [[0, padded_size[0] - shape[0]], [0, padded_size[1] - shape[1]]]
    x = tf.pad(x, pad + [[0, 0]])
    return tf.reshape(x, (1, padded_size[0], padded_size[1], 3))


def traced_function(model, input_specs: dict):
    """The `tf.function` of `model`'s call on a dict of named inputs
    `{name: (shape, dtype)}` (a str in `shape`: a dynamic axis)."""
    import tensorflow as tf

    signature = [
        tf.TensorSpec(_tf_shape(shape), dtype, name=name)
        for name, (shape, dtype) in input_specs.items()
    ]
    names = list(input_specs)

    def serve(*args):
        return model(dict(zip(names, args, strict=True)), training=False)

    return tf.function(serve, input_signature=signature, autograph=False)


def _tf_shape(shape) -> tuple:
    return tuple(None if isinstance(d, str) else d for d in shape)


def to_onnx(
    model,
    input_specs: dict,
    output_shapes: dict,
    path: str | os.PathLike,
    *,
    opset: int,
    metadata: dict | None = None,
    external_data: tuple[str, str] | None = None,
) -> None:
    """Write `model` (a Keras model on dict inputs returning a dict) as an
    ONNX file with exactly these input and output names.

    Args:
        model: the Keras model.
        input_specs: `{name: (shape, dtype)}` in input order; a str in a
            shape names a dynamic axis.
        output_shapes: `{name: shape}`: the keys of the model's output
            dict in output order, with their axes as in `input_specs`.
        path: where to write the `.onnx` file.
        opset: the ONNX opset.
        metadata: `{key: str}` kept in the model's metadata properties.
        external_data: None to keep the weights inside the file (up to
            protobuf's 2 GB limit); else `(data_path, data_name)`: the
            weights go to the file `data_path` and the model refers to
            them as `data_name`, a file beside it (the name `data_path`
            will have once renamed).
    """
    import onnx
    import tensorflow as tf
    from tf2onnx import optimizer
    from tf2onnx import tf_loader
    from tf2onnx.convert import tensor_names_from_structed
    from tf2onnx.graph import ExternalTensorStorage
    from tf2onnx.tf_utils import compress_graph_def
    from tf2onnx.tfonnx import process_tf_graph

    concrete = traced_function(model, input_specs).get_concrete_function()
    input_names = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    tf_outputs = [t.name for t in concrete.outputs]
    with tf.device("/cpu:0"):
        graph_def = _frozen_graph_def(concrete)
        if graph_def.library.function:
            # Grappler inlines the fused kernels' functions (the decoder);
            # a graph without (the image encoder) is spared its copies of
            # the weights.
            with tf.Graph().as_default():
                tf.import_graph_def(graph_def, name="")
                graph_def = tf_loader.tf_optimize(
                    input_names, tf_outputs, graph_def
                )
        # tf2onnx 1.17's reshape optimizer merges a Tensordot's last
        # reshape into the next one and then reads the shape of the wrong
        # tensor when the batch is dynamic: a graph that fails at run time.
        # Nor the passes for quantised graphs and loops, which these
        # graphs have none of (each pass costs a rebuild of the graph).
        skip = {
            "reshape_optimizer",
            "q_dq_optimizer",
            "const_dequantize_optimizer",
            "loop_optimizer",
        }
        optimizers = {
            k: v
            for k, v in optimizer._get_optimizers().items()
            if k not in skip
        }
        with (
            _numpy_product_shim(),
            _fresh_node_protos(),
            tf.Graph().as_default() as tf_graph,
        ):
            # tf2onnx's large-model path, whatever the size: the weights
            # stay outside the graph during conversion (else each optimizer
            # pass kept another copy of them: 11 GB for ViT-B's 360 MB)
            # and no pass deep-copies the graph first (catch_errors=False).
            constants = compress_graph_def(graph_def)
            storage = ExternalTensorStorage()
            tf.import_graph_def(graph_def, name="")
            onnx_graph = process_tf_graph(
                tf_graph,
                const_node_values=constants,
                custom_op_handlers={"Erfc": (_erfc, ())},
                opset=opset,
                input_names=input_names,
                output_names=tf_outputs,
                tensors_to_rename=tensor_names_from_structed(
                    concrete, input_names, tf_outputs
                ),
            )
            onnx_graph = optimizer.optimize_graph(
                onnx_graph, catch_errors=False, optimizers=optimizers
            )
            proto = onnx_graph.make_model(
                f"converted from {model.name}",
                external_tensor_storage=storage,
            )
    # tf2onnx names inputs and outputs after the signature and the output
    # dict's keys, outputs in key order: put them in interface order.
    order = {name: i for i, name in enumerate(output_shapes)}
    if sorted(order) != sorted(o.name for o in proto.graph.output):
        raise RuntimeError(
            "The converted graph's outputs are not the expected ones. "
            f"Received: {[o.name for o in proto.graph.output]}"
        )
    outputs = sorted(proto.graph.output, key=lambda o: order[o.name])
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    _reshape_zero_is_zero(proto)
    shapes = {k: v[0] for k, v in input_specs.items()} | output_shapes
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name], strict=True):
            if isinstance(size, str):
                dim.dim_param = size
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    if external_data is not None:
        _write_external(proto, storage, *external_data)
    else:
        _inline(proto, storage)
    onnx.save_model(proto, os.fspath(path))


def _reshape_zero_is_zero(proto) -> None:
    """Make a 0 in a run-time Reshape shape mean size 0, as in TensorFlow
    (`allowzero=1`), not "keep this axis", ONNX's default: an empty prompt
    axis (a mask prompt without points) must stay empty."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {
        o for n in proto.graph.node if n.op_type == "Constant" for o in n.output
    }
    for node in proto.graph.node:
        if node.op_type != "Reshape" or node.input[1] in constants:
            continue
        if not any(a.name == "allowzero" for a in node.attribute):
            attr = node.attribute.add()
            attr.name, attr.type, attr.i = "allowzero", 2, 1  # INT


@contextlib.contextmanager
def _fresh_node_protos():
    """tf2onnx 1.17 rewrites each node's protobuf in place after every
    optimizer pass; protobuf keeps what it replaces until the message
    itself goes, so every pass kept another copy of the weights (ViT-B:
    +360 MB a pass, out of memory at 23 GB). During the conversion each
    rewrite starts from a new, empty message instead."""
    import onnx
    from tf2onnx import graph

    update_proto = graph.Node.update_proto

    def fresh(self, external_tensor_storage=None):
        old = self._op
        self._op = onnx.NodeProto(
            name=old.name,
            op_type=old.op_type,
            domain=old.domain,
            doc_string=old.doc_string,
        )
        return update_proto(self, external_tensor_storage)

    graph.Node.update_proto = fresh
    try:
        yield
    finally:
        graph.Node.update_proto = update_proto


@contextlib.contextmanager
def _numpy_product_shim():
    """tf2onnx 1.17 calls `np.product` (gone in NumPy 2) when it writes
    tensors as external data; give it `np.prod` for the conversion."""
    missing = not hasattr(np, "product")
    if missing:
        np.product = np.prod
    try:
        yield
    finally:
        if missing:
            del np.product


def _frozen_graph_def(concrete):
    """The concrete function's graph with its variables as constants and
    its fused kernels (`backend.compile.fuse_elementwise`: functions XLA
    must compile) made plain functions that the converter inlines."""
    from tf2onnx import tf_loader

    # tf2onnx's own freezing (no control flow lowering, aggressive
    # inlining) gives the graph without making a function of it again, as
    # TensorFlow's `convert_variables_to_constants_v2` does (3 s more).
    graph_def = tf_loader.convert_variables_to_constants_large_model(concrete)
    xla = ("_XlaMustCompile", "_noinline")
    for node in graph_def.node:
        for key in xla:
            node.attr.pop(key, None)
    for function in graph_def.library.function:
        for key in xla:
            function.attr.pop(key, None)
        for node in function.node_def:
            for key in xla:
                node.attr.pop(key, None)
    return graph_def


def _erfc(ctx, node, name, args):
    """tf2onnx handler of TensorFlow's Erfc (in Keras' exact GELU), which
    ONNX lacks: `1 - erf(x)`. In the GELU `0.5 x erfc(-x / sqrt 2)` the
    difference from a true erfc is below float32 rounding of the result."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name("one"), np.array(1, dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _write_external(proto, storage, data_path: str, data_name: str) -> None:
    """Write every tensor tf2onnx kept outside `proto` to one file,
    `data_path`, and point the tensors at it as `data_name`."""
    import onnx

    offset = 0
    with open(data_path, "wb") as f:
        for tensor in _all_tensors(proto):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            data = storage.name_to_tensor_data[info["location"]]
            pad = (-offset) % 4096  # aligned, for memory mapping
            f.write(b"\0" * pad)
            offset += pad
            f.write(data)
            del tensor.external_data[:]
            for key, value in (
                ("location", data_name),
                ("offset", str(offset)),
                ("length", str(len(data))),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(data)


def _inline(proto, storage) -> None:
    """Put every tensor tf2onnx kept outside `proto` back inside it."""
    import onnx

    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        tensor.raw_data = storage.name_to_tensor_data[info["location"]]
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _all_tensors(proto):
    yield from proto.graph.initializer
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def to_saved_model(model, input_specs: dict, path: str) -> None:
    """Write `model` as a TensorFlow SavedModel folder with Keras' own
    `ExportArchive`: endpoint and signature `serve`, inputs named as in
    `input_specs`, outputs as the model's dict."""
    fn = traced_function(model, input_specs)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", fn)
    archive.write_out(path, verbose=False)


def to_litert(model, input_specs: dict, path: str) -> None:
    """Write `model` as a LiteRT (`.tflite`) file of builtin ops only (no
    Select TF ops: it runs in any LiteRT interpreter), the axes named in
    `input_specs` dynamic (the interpreter resizes them to its inputs).

    The converter gets the traced function with its variables already
    frozen into constants: given the Keras model as the trackable object
    instead, it kept them as resource variables that the interpreter
    never initialises (the outputs were garbage), and its SavedModel path
    takes three times as long.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    traced = traced_function(model, input_specs)
    with _litert_tracing():
        concrete = traced.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    # Freezing flattens the output dict (in sorted key order): named again,
    # they name the signature's outputs.
    keys = sorted(concrete.structured_outputs)

    def named(*args):
        return dict(zip(keys, frozen(*args), strict=True))

    serve = tf.function(
        named, input_signature=traced.input_signature, autograph=False
    ).get_concrete_function()
    # With a trackable object (an empty one: nothing left to initialise)
    # the converter keeps the signature, as `serving_default`.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve], tf.Module()
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flat = converter.convert()
    with open(path, "wb") as f:
        f.write(flat)


# LiteRT's builtin transpose takes up to 6 axes.
LITERT_MAX_TRANSPOSE_RANK = 6


@contextlib.contextmanager
def _litert_tracing():
    """While a model is traced for LiteRT, transposes of more than 6 axes
    (LiteRT's builtin takes up to 6; the mask decoder's pixel reordering
    has 8) are written as rank-4 transposes, one axis into place at a
    time. Only data moves: the numbers are those of the model, and the
    decoder keeps its single transpose everywhere else."""
    import tensorflow as tf

    transpose = tf.transpose

    def low_rank_transpose(a, perm=None, conjugate=False, name="transpose"):
        rank = a.shape.rank if hasattr(a, "shape") else None
        if perm is None or rank is None or rank <= LITERT_MAX_TRANSPOSE_RANK:
            return transpose(a, perm=perm, conjugate=conjugate, name=name)
        return _transpose_in_steps(a, [int(p) for p in perm], transpose)

    tf.transpose = low_rank_transpose
    try:
        yield
    finally:
        tf.transpose = transpose


def _transpose_in_steps(x, perm: list[int], transpose):
    """`transpose(x, perm)` as rank-4 transposes: for each output position
    in turn, the axis that belongs there moves in front of those between
    (`(before, between, axis, after) -> (before, axis, between, after)`)."""
    import tensorflow as tf

    shape = tf.shape(x)
    order = list(range(len(perm)))  # the input axis at each position

    def size(axes):
        if not axes:
            return tf.constant(1, shape.dtype)
        return tf.reduce_prod(tf.stack([shape[a] for a in axes]))

    for i, axis in enumerate(perm):
        j = order.index(axis)
        if j == i:
            continue
        x = tf.reshape(
            x,
            tf.stack(
                [
                    size(order[:i]),
                    size(order[i:j]),
                    shape[axis],
                    size(order[j + 1 :]),
                ]
            ),
        )
        x = transpose(x, (0, 2, 1, 3))
        order.insert(i, order.pop(j))
    return tf.reshape(x, tf.stack([shape[a] for a in perm]))
