"""ONNX export of SAM's two parts: `decoder.onnx` and `image_encoder.onnx`."""

import math
import os
from pathlib import Path

from keras_sam import io
from keras_sam.export import interface

# Weights beyond this many bytes go to an external data file: protobuf
# cannot hold a message over 2 GiB (ViT-L and ViT-H image encoders).
EXTERNAL_DATA_BYTES = 1_800_000_000


def export_decoder_onnx(
    model,
    path: str | os.PathLike,
    *,
    single_mask: bool = False,
    opset: int = interface.OPSET,
    group: io.OutputGroup | None = None,
) -> list[Path]:
    """Write SAM's prompt side as an ONNX file with the official decoder
    interface (`keras_sam.export.interface`).

    Prompt encoder, mask decoder and the upscaling to the runtime
    `orig_im_size`, with dynamic prompt batch `B` and point count `N`.
    Runs on the TensorFlow backend (through `tf2onnx`).

    Args:
        model: a `keras_sam.SAM` (float32).
        path: the `.onnx` file to write (replaced atomically).
        single_mask: one mask per prompt (the official
            `return_single_mask=True` rule) instead of all the decoder's.
        opset: the ONNX opset.
        group: write as part of this `keras_sam.io.OutputGroup` (renamed
            into place when the group commits) instead of at once.

    Returns:
        The paths written.

    Raises:
        RuntimeError: not on the TensorFlow backend.
        ValueError: a model that does not compute in float32.
    """
    from keras_sam.export.decoder import DecoderExport

    _check(model, "ONNX export")
    part = DecoderExport(
        model.prompt_encoder, model.mask_decoder, single_mask=single_mask
    )
    return _write(part, path, opset, None, group)


def export_image_encoder_onnx(
    model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    opset: int = interface.OPSET,
    group: io.OutputGroup | None = None,
) -> list[Path]:
    """Write SAM's image encoder as an ONNX file: the resized picture in,
    the embedding out (`keras_sam.export.interface`).

    Args:
        model: a `keras_sam.SAM` (float32).
        path: the `.onnx` file to write (replaced atomically).
        external_data: keep the weights in `path + ".data"` beside the
            model (ONNX external data) rather than inside it; None decides
            by size (needed beyond 2 GB: ViT-L and ViT-H).
        opset: the ONNX opset.
        group: as in `export_decoder_onnx`.

    Returns:
        The paths written (the model, and its data file if any).

    Raises:
        RuntimeError: not on the TensorFlow backend.
        ValueError: a model that does not compute in float32.
    """
    from keras_sam.export.image_encoder import ImageEncoderExport

    _check(model, "ONNX export")
    if external_data is None:
        weights = sum(
            4 * math.prod(v.shape) for v in model.image_encoder.weights
        )
        external_data = weights > EXTERNAL_DATA_BYTES
    part = ImageEncoderExport(model.image_encoder)
    return _write(part, path, opset, bool(external_data), group)


def _check(model, what: str) -> None:
    from keras_sam.backend.export import check_backend

    check_backend(what)
    if not model.built:
        model.build()
    dtype = model.prompt_encoder.compute_dtype
    if dtype != "float32":
        raise ValueError(
            f"{what} needs a float32 model. Received: a model computing in "
            f"{dtype}"
        )


def _write(part, path, opset, external_data, group) -> list[Path]:
    if group is None:
        with io.output_group() as own:
            return _write(part, path, opset, external_data, own)
    from keras_sam.backend.export import to_onnx

    path = Path(path)
    written = [path]
    with group.path(path, suffix=".onnx") as tmp:
        if not external_data:
            to_onnx(
                part,
                part.input_specs(),
                part.output_shapes(),
                tmp,
                opset=opset,
                metadata=part.metadata(),
            )
        else:
            data = path.with_name(path.name + interface.EXTERNAL_DATA_SUFFIX)
            written.append(data)
            with group.path(data) as data_tmp:
                to_onnx(
                    part,
                    part.input_specs(),
                    part.output_shapes(),
                    tmp,
                    opset=opset,
                    metadata=part.metadata(),
                    external_data=(data_tmp, data.name),
                )
    return written
