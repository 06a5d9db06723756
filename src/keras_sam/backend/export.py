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
    """`(h, w)` int32 of a picture of runtime size `size` (H, W) once its
    long side is resized to `long_side`: `int(x * long_side / max + 0.5)`
    in float64, the predictor's arithmetic to the last bit."""
    import tensorflow as tf

    size = tf.cast(size, tf.float64)
    scale = tf.constant(float(long_side), tf.float64) / tf.reduce_max(size)
    return tf.cast(tf.floor(size * scale + 0.5), tf.int32)


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
    from tf2onnx.convert import _convert_common
    from tf2onnx.convert import tensor_names_from_structed

    concrete = traced_function(model, input_specs).get_concrete_function()
    input_names = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    tf_outputs = [t.name for t in concrete.outputs]
    large = external_data is not None
    with tf.device("/cpu:0"):
        if large:  # the image encoder, which has no fused kernels
            graph_def = tf_loader.from_function(
                concrete, input_names, tf_outputs, large_model=True
            )
        else:
            graph_def = _frozen_graph_def(concrete)
            with tf.Graph().as_default():
                tf.import_graph_def(graph_def, name="")
                graph_def = tf_loader.tf_optimize(
                    input_names, tf_outputs, graph_def
                )
        # tf2onnx 1.17's reshape optimizer merges a Tensordot's last
        # reshape into the next one and then reads the shape of the wrong
        # tensor when the batch is dynamic: a graph that fails at run time.
        optimizers = {
            k: v
            for k, v in optimizer._get_optimizers().items()
            if k != "reshape_optimizer"
        }
        with _numpy_product_shim():
            proto, storage = _convert_common(
                graph_def,
                name=model.name,
                large_model=large,
                opset=opset,
                custom_op_handlers={"Erfc": (_erfc, ())},
                optimizers=optimizers,
                input_names=input_names,
                output_names=tf_outputs,
                tensors_to_rename=tensor_names_from_structed(
                    concrete, input_names, tf_outputs
                ),
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
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(
        concrete, lower_control_flow=False, aggressive_inlining=True
    )
    graph_def = frozen.graph.as_graph_def(add_shapes=True)
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
    """Write `model` as a LiteRT (`.tflite`) file with TensorFlow's
    converter, on the model's `tf.function` (TensorFlow ops allowed where
    LiteRT has no builtin)."""
    import tensorflow as tf

    fn = traced_function(model, input_specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], model
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    with open(path, "wb") as f:
        f.write(converter.convert())
