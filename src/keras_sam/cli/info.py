"""`keras-sam info`: the architecture and size of a checkpoint."""

import os


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="architecture and size of a checkpoint")
    info.add_argument("checkpoint", help="official .pth or .safetensors")


def run(parser, args) -> int:
    import json

    import numpy as np

    from keras_sam.convert.checkpoint import detect_architecture
    from keras_sam.convert.checkpoint import read_state_dict
    from keras_sam.models.presets import PRESETS

    if not os.path.isfile(args.checkpoint):
        parser.error(f"CHECKPOINT: no such file: {args.checkpoint}")
    state = read_state_dict(args.checkpoint)
    config = detect_architecture(state)
    preset = next(
        (
            name
            for name, p in sorted(PRESETS.items())
            if _same_config(p, config)
        ),
        None,
    )
    info = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "tensors": len(state),
        "parameters": int(sum(np.prod(v.shape) for v in state.values())),
        "preset": preset,
        "architecture": config,
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
