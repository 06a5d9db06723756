"""Train a small SAM ("sam_shapes") on the synthetic `ShapesDataset` (JAX).

Usage:
    python scripts/train_shapes.py --steps 5500 --output runs/shapes
    python scripts/train_shapes.py --steps 5500 --output runs/shapes --resume
    python scripts/train_shapes.py --output runs/shapes --evaluate-only \
        --evaluate-images 200

Step `s` (0-based) trains on batch `s` of `ShapesDataset(steps * batch_size,
batch_size, seed)`: the data order depends only on `(seed, step)`, so a run
resumed from a checkpoint sees exactly the batches the uninterrupted run
would have seen. Every `--checkpoint-every` steps the folder `--output`
receives (each file replaced atomically):

- `checkpoint.weights.h5`: the model weights (`model.save_weights`);
- `checkpoint.optimizer.npz`: the optimizer variables, `arr_<i>` in the
  order of `optimizer.variables` (its step counter, hence the learning-rate
  schedule, included), then the refinement clicks' seed state;
- `checkpoint.json`: `{"step": <steps done>, "losses": [per-step training
  loss], "wall_time_s": <training seconds, summed over resumed runs>}`.

`--stop-at S` checkpoints and exits after step `S`; `--resume` then goes on
from there, bit-identical: `tests/scripts/test_train_shapes.py` checks on
each backend that two runs with the same seed and steps, and a run stopped
and resumed, end with the same weights (TensorFlow's resumed run within
1e-5 relative: it once came out a few ulps off under load). The random
state of the refinement clicks (`--refinement-iterations`,
`--mask-only-iterations`, see `SAM.compile`) is seeded from `--seed` and
saved in `checkpoint.optimizer.npz`.

At the end it writes `sam_shapes.weights.h5` (Keras weights),
`sam_shapes.safetensors` and `sam_shapes.json`. The safetensors file maps
each Keras variable path (`variable.path`, e.g.
`"image_encoder/patch_embed/.../kernel"`) to its value in Keras layouts
(channels-last kernels), stored as `--export-dtype` (float16 by default,
to halve the file; `load_model` casts back to the variables' float32); its
metadata holds `"format":
"keras_sam.variable_paths"` and `"config"` (the JSON of the three config
dicts). `load_model` below rebuilds the model from it. The JSON records the
command, steps, wall time, final training loss and the config dicts;
`--evaluate-images N` (or a later `--evaluate-only`) adds the held-out
`keras_sam.training.evaluation.evaluate_shapes` result of the exported file.

Training seeds must be below `keras_sam.evaluation.EVALUATION_SEED`: scenes
are drawn from `(seed, index, attempt, 1)`, so scenes of different seeds
never coincide, and the held-out evaluation uses that seed.
"""

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam.convert.checkpoint import read_state_dict  # noqa: E402
from keras_sam.convert.checkpoint import write_safetensors  # noqa: E402
from keras_sam.models.sam import SAM  # noqa: E402
from keras_sam.training.datasets import ShapesDataset  # noqa: E402
from keras_sam.training.losses import SAMLoss  # noqa: E402

IMAGE_SIZE = 256
EVALUATION_SEED = 10_000_000  # = keras_sam.training.evaluation.EVALUATION_SEED
FORMAT = "keras_sam.variable_paths"


def model_config(
    *, patch_size: int = 16, hidden_size: int = 128, num_layers: int = 4
) -> dict:
    """The three config dicts of the shapes model."""
    grid = IMAGE_SIZE // patch_size
    width = hidden_size
    return dict(
        image_encoder=dict(
            hidden_size=hidden_size,
            num_layers=num_layers,
            intermediate_dim=4 * hidden_size,
            num_heads=4,
            # A 16x16 grid is small: global attention everywhere.
            global_attention_layer_indices=tuple(range(num_layers)),
            image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
            patch_size=patch_size,
            num_output_channels=width,
            window_size=8,
        ),
        prompt_encoder=dict(
            hidden_size=width,
            image_embedding_size=(grid, grid),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_channels=16,
        ),
        mask_decoder=dict(
            hidden_size=width,
            num_layers=2,
            intermediate_dim=256,
            num_heads=4,
            embedding_dim=width,
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=width,
        ),
    )


class _RecipeSAM(SAM):
    """SAM with the official supervision: an ambiguous prompt (one click,
    nothing else) trains the best of the three multimask outputs (the
    minimum loss); any other prompt (a box, several clicks, a refinement
    round's fed-back mask) the single-mask output (index 0), as SAM's
    training. Plain
    `SAMLoss` takes the minimum over all four, which leaves output 0 (the
    one `multimask_output=False` returns) nearly untrained."""

    supervise_all_iou = False

    def prompt_loss(self, x, y, outputs, sample_weight=None):
        from keras import ops

        from keras_sam.training.refinement import is_ambiguous

        # (B, [K,] T, H, W) masks, (B, [K,] T) IoUs; T on axis -3 / -1.
        masks, iou_pred = outputs["masks"], outputs["iou_pred"]
        single = SAMLoss(multimask_min=False, reduction=None)(
            y, {"masks": masks[..., :1, :, :], "iou_pred": iou_pred[..., :1]}
        )  # (B, [K])
        multi = SAMLoss(
            supervise_all_iou=self.supervise_all_iou, reduction=None
        )(
            y, {"masks": masks[..., 1:, :, :], "iou_pred": iou_pred[..., 1:]}
        )  # (B, [K])
        ambiguous = ops.cast(
            is_ambiguous(x["labels"], "boxes" in x, "masks" in x),
            single.dtype,
        )
        return ops.mean(ambiguous * multi + (1.0 - ambiguous) * single)


def build_model(config: dict, cls=SAM) -> SAM:
    model = cls.from_config_dicts(
        config["image_encoder"],
        config["prompt_encoder"],
        config["mask_decoder"],
        name="sam_shapes",
    )
    model.build()
    return model


def export_state(model, dtype: str = "float32") -> dict[str, np.ndarray]:
    """`{variable.path: array}` of every model variable, cast to `dtype`."""
    state = {}
    for v in model.weights:
        if v.path in state:
            raise ValueError(f"Duplicate variable path {v.path!r}")
        state[v.path] = np.asarray(keras.ops.convert_to_numpy(v), dtype)
    return state


def load_model(path: str | os.PathLike) -> SAM:
    """Rebuild the model from a `sam_shapes.safetensors` file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"Not a {FORMAT} file. Received: metadata format "
            f"{metadata.get('format')!r} in {path}"
        )
    model = build_model(json.loads(metadata["config"]))
    state = read_state_dict(path)
    paths = {v.path for v in model.weights}
    if paths != set(state):
        raise ValueError(
            f"Variable paths differ: missing {sorted(paths - set(state))}, "
            f"unexpected {sorted(set(state) - paths)}"
        )
    for v in model.weights:
        if tuple(v.shape) != state[v.path].shape:
            raise ValueError(
                f"Shape of {v.path}: model {tuple(v.shape)}, file "
                f"{state[v.path].shape}"
            )
        v.assign(state[v.path].astype(v.dtype))
    return model


def _resize_linear(table: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of `table` along `axis` to `size` samples, the
    first and last samples kept (PyTorch `interpolate(..., "linear",
    align_corners=True)`)."""
    old = table.shape[axis]
    if old == size:
        return table
    where = np.linspace(0.0, old - 1.0, size)
    lo = np.minimum(np.floor(where).astype(int), old - 2)
    frac = (where - lo).reshape(
        [-1 if a == axis else 1 for a in range(table.ndim)]
    )
    take = lambda i: np.take(table, i, axis=axis)  # noqa: E731
    return (1.0 - frac) * take(lo) + frac * take(lo + 1)


_BLOCK = re.compile(r"/image_encoder/block_(\d+)/")
# A pre-norm block whose two residual branches end in zeros is the identity.
_RESIDUAL_OUTPUTS = ("/attention/proj/", "/mlp/layer_1/")


def _new_block_value(v, state: dict) -> np.ndarray:
    """Initial value of a variable of an image-encoder block that `state`
    lacks, the model having more blocks than the initial weights: its own
    (seeded random) initial value, but zeros for the output projection of
    the attention and of the MLP, so that the new block starts as the
    identity (`x + 0`, then `x + 0`) and the deeper model computes at
    step 0 exactly what the initial weights did. Only blocks past the
    initial weights' last one may be added."""
    found = _BLOCK.search(v.path)
    if found is None:
        raise ValueError(f"{v.path!r} is not in the initial weights")
    index = int(found.group(1))
    have = {int(m.group(1)) for m in map(_BLOCK.search, state) if m is not None}
    if not have or index <= max(have):
        raise ValueError(f"{v.path!r} is not in the initial weights")
    value = np.asarray(keras.ops.convert_to_numpy(v), np.float32)
    if any(part in v.path for part in _RESIDUAL_OUTPUTS):
        value = np.zeros_like(value)
    return value


def resample_state(state: dict, model) -> dict[str, np.ndarray]:
    """`state` (`{variable.path: array}` of a shapes model) fitted to
    `model`, whose image encoder may have another patch size.

    Variables of equal shapes are copied. For a finer patch (e.g. 16 -> 8):
    the patch-embedding kernel `(p, p, 3, C)` becomes the sums of its
    `(p/q, p/q)` blocks (the same response on a locally constant image),
    the absolute position embedding `(1, g, g, C)` and the relative
    position tables `(2g - 1, d)` are interpolated linearly over the finer
    grid, first and last samples kept (`align_corners=True`; the middle of
    a relative table, distance 0, stays too). The official `get_rel_pos`
    also resizes its tables linearly, with `align_corners=False`; training
    goes on from here, so either start serves. A model with more
    image-encoder blocks than `state` gets the extra blocks at the end,
    initialised as the identity (`_new_block_value`). Any other difference
    is an error.
    """
    out = {}
    for v in model.weights:
        if v.path not in state:
            out[v.path] = _new_block_value(v, state)
            continue
        old = np.asarray(state[v.path], np.float32)
        new_shape = tuple(v.shape)
        name = v.path.rsplit("/", 1)[-1]
        if old.shape == new_shape:
            out[v.path] = old
        elif name == "kernel" and "patch_embed" in v.path:
            factor = old.shape[0] // new_shape[0]
            if (
                factor * new_shape[0] != old.shape[0]
                or old.shape[2:] != new_shape[2:]
            ):
                raise ValueError(
                    f"Cannot resample {v.path}: {old.shape} -> {new_shape}"
                )
            q = new_shape[0]
            out[v.path] = old.reshape(q, factor, q, factor, *old.shape[2:]).sum(
                axis=(1, 3)
            )
        elif name == "pos_embed":
            out[v.path] = _resize_linear(
                _resize_linear(old, new_shape[1], 1), new_shape[2], 2
            )
        elif name in ("rel_pos_h", "rel_pos_w"):
            out[v.path] = _resize_linear(old, new_shape[0], 0)
        else:
            raise ValueError(
                f"Shape of {v.path}: model {new_shape}, initial weights "
                f"{old.shape}"
            )
        if out[v.path].shape != new_shape:
            raise ValueError(
                f"Cannot resample {v.path}: {old.shape} -> {new_shape}"
            )
    return out


def freeze(model, train_only: str) -> None:
    """`--train-only`: "all" (nothing frozen), "decoder" (the image encoder
    frozen) or "iou_head" (`freeze_all_but_iou_head`)."""
    if train_only == "decoder":
        model.image_encoder.trainable = False
    elif train_only == "iou_head":
        freeze_all_but_iou_head(model)
    elif train_only != "all":
        raise ValueError(f"Unknown train_only {train_only!r}")


def freeze_all_but_iou_head(model) -> None:
    """Make only `model.mask_decoder.iou_prediction_head` trainable.

    Keras collects a model's trainable variables by their own `trainable`
    flags: freezing the decoder clears every flag below it, then the head's
    flags are set again.
    """
    model.image_encoder.trainable = False
    model.prompt_encoder.trainable = False
    model.mask_decoder.trainable = False
    head = model.mask_decoder.iou_prediction_head
    head.trainable = True
    trainable = {id(v) for v in model.trainable_variables}
    if not trainable or trainable != {id(v) for v in head.variables}:
        raise RuntimeError("Could not freeze all but the IoU head")


class _FromStep(keras.utils.PyDataset):
    """Batches `start, start + 1, ...` of `data`: resuming keeps the order."""

    def __init__(self, data: ShapesDataset, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        return self.data[self.start + index]


def _replace(path: Path, write) -> None:
    """Write through `write(tmp_path)`, then rename over `path`."""
    tmp = path.with_name(".tmp." + path.name)
    write(tmp)
    os.replace(tmp, path)


def _seed_state(model):
    return model.refinement_seed_generator.state


def save_checkpoint(model, output: Path, progress: dict) -> None:
    """Weights, optimizer state and `progress` (step, losses, wall time)."""
    _replace(output / "checkpoint.weights.h5", model.save_weights)
    arrays = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    # The refinement clicks' random state (not a weight: not in the .h5).
    arrays.append(keras.ops.convert_to_numpy(_seed_state(model)))
    _replace(
        output / "checkpoint.optimizer.npz",
        lambda p: np.savez(p, *arrays),
    )
    _replace(
        output / "checkpoint.json",
        lambda p: p.write_text(json.dumps(progress)),
    )


def load_checkpoint(model, output: Path) -> dict:
    progress = json.loads((output / "checkpoint.json").read_text())
    progress.setdefault("wall_time_s", 0.0)  # not recorded by early runs
    model.load_weights(output / "checkpoint.weights.h5")
    model.optimizer.build(model.trainable_variables)
    with np.load(output / "checkpoint.optimizer.npz") as f:
        arrays = [f[f"arr_{i}"] for i in range(len(f.files))]
    if len(arrays) == len(model.optimizer.variables) + 1:
        _seed_state(model).assign(arrays.pop())
    if len(arrays) != len(model.optimizer.variables):
        raise ValueError("Optimizer state does not match the model")
    for v, a in zip(model.optimizer.variables, arrays, strict=True):
        v.assign(a)
    return progress


class _Progress(keras.callbacks.Callback):
    """Per-step losses (from Keras' running mean) and periodic checkpoints."""

    def __init__(self, output: Path, every: int, progress: dict):
        super().__init__()
        self.output = output
        self.every = every
        self.progress = progress
        self.start = progress["step"]
        self.wall_start = progress["wall_time_s"]
        self.began = time.perf_counter()
        self._previous = 0.0

    def update(self, step: int) -> dict:
        self.progress["step"] = step
        elapsed = time.perf_counter() - self.began
        self.progress["wall_time_s"] = self.wall_start + elapsed
        return self.progress

    def on_train_batch_end(self, batch, logs=None):
        # logs["loss"] is the mean over this fit() call's batches so far.
        mean = float(logs["loss"])
        loss = mean * (batch + 1) - self._previous * batch
        self.progress["losses"].append(loss)
        self._previous = mean
        step = self.start + batch + 1
        if step % self.every == 0:
            save_checkpoint(self.model, self.output, self.update(step))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from the weights of this sam_shapes.safetensors (its "
        "patch size may be coarser: see resample_state); the optimizer and "
        "schedule start afresh",
    )
    parser.add_argument(
        "--prompts-per-image",
        type=int,
        default=1,
        help="prompts decoded per training image (the encoder runs once for "
        "all of them); 1: one (image, prompt) pair per example",
    )
    parser.add_argument(
        "--loss",
        choices=("recipe", "min4"),
        default="recipe",
        help="recipe: boxes train output 0, points the best of outputs "
        "1-3 (official SAM); min4: SAMLoss's minimum over all four",
    )
    parser.add_argument(
        "--supervise-all-iou",
        action="store_true",
        help="recipe loss: train the IoU head on all three multimask "
        "outputs of a point, not only the chosen one (SAM 2's option; "
        "the evaluation ranks the three by predicted IoU)",
    )
    parser.add_argument(
        "--train-only",
        choices=("all", "decoder", "iou_head"),
        default="all",
        help="decoder: freeze the image encoder; iou_head: train only the "
        "mask decoder's IoU prediction head (everything else frozen; a short "
        "stage that re-fits the scores that rank the three masks of a click)",
    )
    parser.add_argument(
        "--refinement-iterations",
        type=int,
        default=0,
        help="correction-click rounds per prompt (SAM's interactive "
        "training, see SAM.compile); 0: the data's prompt only",
    )
    parser.add_argument(
        "--mask-only-iterations",
        type=int,
        default=0,
        help="further rounds per prompt with no new click, the previous "
        "mask fed back (the last round, the others at random positions; "
        "SAM's recipe: 2, see SAM.compile)",
    )
    parser.add_argument(
        "--box-noise",
        type=float,
        default=0.1,
        help="standard deviation of the training boxes' jitter, as a "
        "fraction of the box side (0.1: SAM's; the evaluation's boxes are "
        "tight)",
    )
    parser.add_argument(
        "--box-fraction",
        type=float,
        default=0.5,
        help="probability that a training prompt is a box rather than a "
        "click (each refinement round then adds clicks to either)",
    )
    parser.add_argument(
        "--target-size",
        choices=("low-res", "input"),
        default="low-res",
        help="resolution of the ground-truth masks: low-res (the decoder's "
        "4x-embedding grid, the masks block-averaged onto it) or input "
        "(the model input's pixels; the loss upsamples the logits to it "
        "as the predictor does, so it sees the boundaries users get)",
    )
    parser.add_argument(
        "--export-dtype",
        choices=("float32", "float16"),
        default="float16",
        help="dtype of the exported safetensors (float16 halves the size)",
    )
    parser.add_argument(
        "--evaluate-images",
        type=int,
        default=0,
        help="after training, held-out images for evaluate_shapes (0: none)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="only evaluate <output>/sam_shapes.safetensors; add the result "
        "to <output>/sam_shapes.json",
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="checkpoint and exit after this step (resume later)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.seed < EVALUATION_SEED:
        parser.error(
            f"--seed must be in [0, {EVALUATION_SEED}) (the evaluation "
            f"seed is {EVALUATION_SEED}). Received: {args.seed}"
        )
    for flag in ("refinement_iterations", "mask_only_iterations"):
        if getattr(args, flag) < 0:
            parser.error(
                f"--{flag.replace('_', '-')} must be >= 0. Received: "
                f"{getattr(args, flag)}"
            )
    if args.box_noise < 0:
        parser.error(f"--box-noise must be >= 0. Received: {args.box_noise}")
    if not 0 <= args.box_fraction <= 1:
        parser.error(
            f"--box-fraction must be in [0, 1]. Received: {args.box_fraction}"
        )
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    return args


def evaluate(output: Path, num_images: int, command: str) -> dict:
    """Evaluate the exported model; record the result in its JSON."""
    from keras_sam.training.evaluation import evaluate_shapes

    model = load_model(output / "sam_shapes.safetensors")
    began = time.perf_counter()
    result = evaluate_shapes(model, num_images=num_images)
    result["seed"] = EVALUATION_SEED
    result["wall_time_s"] = round(time.perf_counter() - began, 1)
    result["command"] = command
    path = output / "sam_shapes.json"
    record = json.loads(path.read_text())
    record["evaluation"] = result
    path.write_text(json.dumps(record, indent=2))
    print(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    # Recorded without this machine's paths: the interpreter as `python`,
    # the script relative to the working folder when it lies below it.
    script = os.path.relpath(os.path.abspath(sys.argv[0]))
    if script.startswith(".."):
        script = os.path.basename(script)
    command = shlex.join(["python", script, *sys.argv[1:]])
    output = args.output
    if args.evaluate_only:
        evaluate(output, args.evaluate_images or 200, command)
        return 0
    output.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    config = model_config(
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
    )
    model = build_model(config, _RecipeSAM if args.loss == "recipe" else SAM)
    model.supervise_all_iou = args.supervise_all_iou
    if args.init_from is not None:
        for v, value in zip(
            model.weights,
            resample_state(read_state_dict(args.init_from), model).values(),
            strict=True,
        ):
            v.assign(value.astype(v.dtype))
    freeze(model, args.train_only)
    warmup = min(args.warmup_steps, args.steps - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(args.steps - warmup, 1),
        alpha=0.01,
        warmup_target=args.lr,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            schedule, weight_decay=args.weight_decay, clipnorm=1.0
        ),
        loss=SAMLoss(),
        refinement_iterations=args.refinement_iterations,
        mask_only_iterations=args.mask_only_iterations,
    )
    _seed_state(model).assign(
        np.array(
            [args.seed, 0],
            keras.backend.standardize_dtype(_seed_state(model).dtype),
        )
    )
    progress = {"step": 0, "losses": [], "wall_time_s": 0.0}
    if args.resume and (output / "checkpoint.json").exists():
        progress = load_checkpoint(model, output)
        print(f"Resumed at step {progress['step']}", file=sys.stderr)
    start = progress["step"]
    grid = config["prompt_encoder"]["image_embedding_size"][0]
    data = ShapesDataset(
        args.steps * args.batch_size,
        args.batch_size,
        args.seed,
        image_size=(IMAGE_SIZE, IMAGE_SIZE),
        prompt="mixed",
        input_size=IMAGE_SIZE,
        mask_size=4 * grid if args.target_size == "low-res" else IMAGE_SIZE,
        box_noise=args.box_noise,
        box_fraction=args.box_fraction,
        prompts_per_image=(
            None if args.prompts_per_image == 1 else args.prompts_per_image
        ),
    )
    params = sum(int(np.prod(v.shape)) for v in model.weights)
    print(
        f"{params} parameters; steps {start} -> {args.steps}", file=sys.stderr
    )
    stop = min(args.stop_at or args.steps, args.steps)
    if start < stop:
        callback = _Progress(output, args.checkpoint_every, progress)
        model.fit(
            _FromStep(data, start, stop, workers=args.workers),
            epochs=1,
            # fit() shuffles a PyDataset's batches by default: keep step s
            # on batch s, so that resuming continues the same order.
            shuffle=False,
            verbose=1,
            callbacks=[callback],
        )
        save_checkpoint(model, output, callback.update(stop))
    if stop < args.steps:
        print(
            f"Stopped at step {stop}; continue with --resume", file=sys.stderr
        )
        return 0
    tail = progress["losses"][-100:]
    final_loss = float(np.mean(tail)) if tail else math.nan

    model.save_weights(output / "sam_shapes.weights.h5")
    write_safetensors(
        export_state(model, args.export_dtype),
        output / "sam_shapes.safetensors",
        metadata={"format": FORMAT, "config": json.dumps(config)},
    )
    record = {
        "command": command,
        "backend": keras.backend.backend(),
        "steps": args.steps,
        "resumed_from_step": start,
        "batch_size": args.batch_size,
        "prompts_per_image": args.prompts_per_image,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": warmup,
        "seed": args.seed,
        "init_from": None if args.init_from is None else str(args.init_from),
        "wall_time_s": round(progress["wall_time_s"], 1),
        "steps_per_s": round(
            args.steps / max(progress["wall_time_s"], 1e-9), 3
        ),
        "final_train_loss": final_loss,
        "final_train_loss_note": "mean per-step loss of the last 100 steps",
        "num_parameters": params,
        "weights_format": FORMAT,
        "weights_dtype": args.export_dtype,
        "loss": args.loss,
        "supervise_all_iou": args.supervise_all_iou,
        "train_only": args.train_only,
        "box_noise": args.box_noise,
        "box_fraction": args.box_fraction,
        "refinement_iterations": args.refinement_iterations,
        "mask_only_iterations": args.mask_only_iterations,
        "target_size": args.target_size,
        "config": config,
    }
    (output / "sam_shapes.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in list(record)[:12]}, indent=2))
    if args.evaluate_images:
        evaluate(output, args.evaluate_images, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
