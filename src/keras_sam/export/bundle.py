"""Export a SAM's two parts into a folder, in one format, all or nothing."""

import os
import shutil
import tempfile
from pathlib import Path

from keras_sam import io
from keras_sam.export import interface

FORMATS = ("onnx", "litert", "saved_model")
# format -> (decoder name, image encoder name); SavedModels are folders.
FILE_NAMES = {
    "onnx": (interface.DECODER_FILE, interface.IMAGE_ENCODER_FILE),
    "litert": ("decoder.tflite", "image_encoder.tflite"),
    "saved_model": ("decoder_saved_model", "image_encoder_saved_model"),
}


def planned_outputs(fmt: str, decoder_only: bool) -> list[str]:
    """The names `export_model` may write in its folder (ONNX: the image
    encoder's external data file too, written only beyond 2 GB)."""
    decoder, encoder = FILE_NAMES[fmt]
    names = [decoder]
    if not decoder_only:
        names.append(encoder)
        if fmt == "onnx":
            names.append(encoder + interface.EXTERNAL_DATA_SUFFIX)
    return names


def export_model(
    model,
    output_dir: str | os.PathLike,
    *,
    format: str = "onnx",
    decoder_only: bool = False,
    single_mask: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write `model`'s decoder (and image encoder) into `output_dir`.

    The decoder has the official ONNX decoder interface in every format;
    the image encoder takes the resized picture (`keras_sam.export.
    interface`). Everything is written under temporary names and renamed
    into place at the end: the folder gets all the files or none.

    Args:
        model: a `keras_sam.SAM` (float32).
        output_dir: the folder (created if missing).
        format: `"onnx"` (`tf2onnx`), `"litert"` (`.tflite` of LiteRT's
            builtin ops, TensorFlow's converter) or `"saved_model"`
            (Keras' `tf_saved_model` export).
            All run on the TensorFlow backend.
        decoder_only: skip the image encoder.
        single_mask: one mask per prompt (the official rule).
        overwrite: replace existing outputs (else a FileExistsError).

    Returns:
        The paths written.
    """
    from keras_sam.export.decoder import DecoderExport
    from keras_sam.export.image_encoder import ImageEncoderExport
    from keras_sam.export.onnx import export_decoder_onnx
    from keras_sam.export.onnx import export_image_encoder_onnx

    if format not in FORMATS:
        raise ValueError(
            f"`format` must be one of {', '.join(FORMATS)}. Received: "
            f"format={format!r}"
        )
    folder = Path(output_dir)
    existing = [
        folder / n
        for n in planned_outputs(format, decoder_only)
        if os.path.lexists(folder / n)
    ]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists; pass overwrite=True (--overwrite) to "
            "replace it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    io.remove_leftovers(folder)
    decoder_name, encoder_name = FILE_NAMES[format]
    if format == "onnx":
        with io.output_group() as group:
            written = export_decoder_onnx(
                model,
                folder / decoder_name,
                single_mask=single_mask,
                group=group,
            )
            if not decoder_only:
                written += export_image_encoder_onnx(
                    model, folder / encoder_name, group=group
                )
        return written

    from keras_sam.backend import export as backend_export

    backend_export.check_backend(f"{format} export")
    if not model.built:
        model.build()
    parts = [
        (
            decoder_name,
            DecoderExport(
                model.prompt_encoder,
                model.mask_decoder,
                single_mask=single_mask,
            ),
        )
    ]
    if not decoder_only:
        parts.append((encoder_name, ImageEncoderExport(model.image_encoder)))
    if format == "litert":
        with io.output_group() as group:
            for name, part in parts:
                with group.path(folder / name, suffix=".tflite") as tmp:
                    backend_export.to_litert(part, part.input_specs(), tmp)
        return [folder / name for name, _ in parts]
    return _write_folders(folder, parts, backend_export.to_saved_model)


def _write_folders(folder: Path, parts, write) -> list[Path]:
    """Each SavedModel into a temporary folder beside its destination,
    then all renamed into place (an existing one is replaced)."""
    staged = []
    try:
        for name, part in parts:
            tmp = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", dir=folder)
            staged.append((tmp, folder / name))
            write(part, part.input_specs(), os.path.join(tmp, "model"))
        for tmp, final in staged:
            if os.path.isdir(final) and not os.path.islink(final):
                shutil.rmtree(final)
            elif os.path.lexists(final):
                os.unlink(final)
            os.replace(os.path.join(tmp, "model"), final)
    finally:
        for tmp, _ in staged:
            shutil.rmtree(tmp, ignore_errors=True)
    return [final for _, final in staged]
