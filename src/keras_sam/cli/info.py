"""`keras-sam info`: the architecture and size of a checkpoint."""

import os


def add_parser(sub) -> None:
    info = sub.add_parser(
        "info",
        help="architecture and size of a checkpoint",
        description=(
            "Print, as JSON, the format, architecture, tensor and parameter "
            "counts and matching preset of a checkpoint: an official or "
            "MobileSAM one "
            "(architecture read from its tensor shapes; the mask decoder's "
            "head count, in no shape, is assumed to be the official 8 and "
            'listed under "assumed"), a Hugging Face SamModel (folder or '
            "weights file), a KerasHub SAM preset folder, or a keras-sam "
            "safetensors file (architecture read from its metadata). "
            "Tensors and parameters are counted in the official layout."
        ),
    )
    info.add_argument(
        "checkpoint",
        help="official .pth or .safetensors, keras-sam file, Hugging Face "
        "SamModel folder or file, or KerasHub preset folder",
    )


def run(parser, args) -> int:
    import json

    import numpy as np

    from keras_sam.cli.common import check_checkpoint_path
    from keras_sam.convert import checkpoint
    from keras_sam.models.presets import PRESETS

    path = args.checkpoint
    check_checkpoint_path(parser, "CHECKPOINT", path)
    if (
        os.path.isfile(path)
        and checkpoint.safetensors_format(path)
        == checkpoint.KERAS_SAFETENSORS_FORMAT
    ):
        state = checkpoint.read_state_dict(path)
        config = checkpoint.read_metadata_config(path, state)
        file_format = checkpoint.KERAS_SAFETENSORS_FORMAT
        assumed = {}
    else:
        from keras_sam.convert.formats import read_checkpoint

        # What SAM.from_checkpoint reads, in official names; "assumed"
        # holds what it uses unless told (in no file).
        file_format, state, config, assumed = read_checkpoint(path)
    preset = next(
        (
            name
            for name, p in sorted(PRESETS.items())
            if _same_config(p, config)
        ),
        None,
    )
    info = {
        "checkpoint": os.path.abspath(path),
        "format": file_format,
        "tensors": len(state),
        "parameters": int(sum(np.prod(v.shape) for v in state.values())),
        "preset": preset,
        "architecture": config,
        "assumed": assumed,
    }
    print(json.dumps(info, indent=2, default=list))
    return 0


def _same_config(preset: dict, config: dict) -> bool:
    def norm(d):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

    return all(
        norm({k: v for k, v in config[part].items() if k in preset[part]})
        == norm(preset[part])
        for part in ("image_encoder", "prompt_encoder", "mask_decoder")
    )
