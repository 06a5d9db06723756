"""The whole Segment Anything Model: image encoder, prompt encoder, decoder."""

import os

import keras
from keras import ops

from keras_sam.layers.mask_decoder import SAMMaskDecoder
from keras_sam.layers.prompt_encoder import SAMPromptEncoder
from keras_sam.models.image_encoder import SAMImageEncoder
from keras_sam.models.presets import PRESETS

KERAS_SAFETENSORS_FORMAT = "keras_sam.variable_paths"


def _constructor_args(layer) -> dict:
    """A layer's own constructor arguments (no name/dtype/trainable)."""
    base = keras.layers.Layer().get_config()
    return {k: v for k, v in layer.get_config().items() if k not in base}


def decode_prompts(
    prompt_encoder,
    mask_decoder,
    image_embeddings,
    points=None,
    labels=None,
    boxes=None,
    masks=None,
) -> dict:
    """Prompt encoder then mask decoder, sharing the image side.

    Without mask prompts every row of the dense prompt embedding is the same
    "no mask" vector; for a batch-1 image only one row is passed on, so the
    decoder projects the image side of its first block once for all `B`
    prompts instead of once each (same result, see
    `MultiHeadAttentionWithDownsampling`).

    Returns:
        The decoder's dict: `"masks"` `(B, 1 + n, 4He, 4We)`, `"iou_pred"`
        `(B, 1 + n)`.
    """
    prompts = prompt_encoder(
        points=points, labels=labels, boxes=boxes, masks=masks
    )
    if masks is None and image_embeddings.shape[0] == 1:
        dense = prompts["prompt_dense_embeddings"]
        prompts["prompt_dense_embeddings"] = dense[:1]
    return mask_decoder(image_embeddings=image_embeddings, **prompts)


# Rank of each prompt tensor with one prompt per image; one more means `K`
# prompts per image (SAM.call).
_PROMPT_RANKS = {"points": 3, "labels": 2, "boxes": 4, "masks": 5}


def _prompts(inputs: dict) -> dict:
    """The prompt tensors of a model input dict (all but `images`)."""
    return {k: v for k, v in inputs.items() if k != "images" and v is not None}


def _split_per_image(tensors: dict, per_image: int) -> dict:
    """`(B * K, ...)` tensors -> `(B, K, ...)`: rows `b*K..` of image `b`."""
    return {
        k: ops.reshape(v, (-1, per_image, *v.shape[1:]))
        for k, v in tensors.items()
    }


def _prompts_per_image(prompts: dict) -> int | None:
    """None (one prompt per image) or `K` of `(B, K, ...)` prompt tensors."""
    extra = {
        name: len(value.shape) - _PROMPT_RANKS[name]
        for name, value in prompts.items()
        if name in _PROMPT_RANKS
    }
    if not extra or set(extra.values()) == {0}:
        return None
    if set(extra.values()) != {1}:
        raise ValueError(
            "Prompts must all have one prompt per image (points (B, N, 2), "
            "labels (B, N), boxes (B, M, 2, 2), masks (B, 1, h, w, 1)) or "
            "all K per image (an extra axis K after the batch axis). "
            "Received shapes: "
            + ", ".join(f"{k}={tuple(v.shape)}" for k, v in prompts.items())
        )
    counts = {tuple(v.shape)[1] for v in prompts.values()}
    if len(counts) != 1 or None in counts:
        raise ValueError(
            "All prompt tensors must have the same known number of prompts "
            "per image (axis 1). Received shapes: "
            + ", ".join(f"{k}={tuple(v.shape)}" for k, v in prompts.items())
        )
    return int(counts.pop())


@keras.saving.register_keras_serializable(package="keras_sam")
class SAM(keras.Model):
    """Segment Anything Model: image encoder + prompt encoder + mask decoder.

    The expensive image encoder runs once per image (`encode_image`); the
    prompt encoder and the decoder run once per prompt batch (`decode`).
    `call` chains the three.

    Args:
        image_encoder: a `SAMImageEncoder`.
        prompt_encoder: a `SAMPromptEncoder`.
        mask_decoder: a `SAMMaskDecoder`.

    Call arguments:
        inputs: dict with `"images"` `(B, H, W, 3)` (normalised, padded; see
            `keras_sam.SAMPredictor` for the pre-processing) and any of
            `"points"`, `"labels"`, `"boxes"`, `"masks"` as in
            `SAMPromptEncoder`.

        Several prompts per image (training: the image encoder then runs
        once for `K` supervised masks): give every prompt tensor an extra
        axis `K` after the batch axis, i.e. `"points"` `(B, K, N, 2)`,
        `"labels"` `(B, K, N)`, `"boxes"` `(B, K, M, 2, 2)`, `"masks"`
        `(B, K, 1, 4He, 4We, 1)`; prompt `(b, k)` is decoded on image `b`.

    Returns:
        dict with `"masks"` `(B, 1 + n, 4He, 4We)` logits and `"iou_pred"`
        `(B, 1 + n)`; with `K` prompts per image `(B, K, 1 + n, 4He, 4We)`
        and `(B, K, 1 + n)`. In training with refinement rounds (see
        `compile`) the dict also carries `"image_embeddings"` `(B, He,
        We, C)`, which the refinement rounds of `compute_loss` decode on.

    Example:
    >>> model = keras_sam.SAM.from_preset("sam_vit_b")  # doctest: +SKIP
    >>> model = keras_sam.SAM.from_checkpoint("sam_vit_b_01ec64.pth")
    ... # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        image_encoder: SAMImageEncoder,
        prompt_encoder: SAMPromptEncoder,
        mask_decoder: SAMMaskDecoder,
        **kwargs,
    ):
        super().__init__(**kwargs)
        image_grid = image_encoder.grid_size
        if tuple(prompt_encoder.image_embedding_size) != tuple(image_grid):
            raise ValueError(
                "`prompt_encoder.image_embedding_size` must equal the image "
                f"encoder's output grid. Received: image_embedding_size="
                f"{prompt_encoder.image_embedding_size}, image encoder grid "
                f"{image_grid}"
            )
        if tuple(prompt_encoder.input_image_size) != tuple(
            image_encoder.image_shape[:2]
        ):
            raise ValueError(
                "`prompt_encoder.input_image_size` must equal the image "
                "encoder's input size. Received: input_image_size="
                f"{prompt_encoder.input_image_size}, image_shape="
                f"{image_encoder.image_shape}"
            )
        widths = {
            "image_encoder.num_output_channels": (
                image_encoder.num_output_channels
            ),
            "prompt_encoder.hidden_size": prompt_encoder.hidden_size,
            "mask_decoder.embedding_dim": mask_decoder.embedding_dim,
        }
        if len(set(widths.values())) != 1:
            raise ValueError(
                "The three parts must share one embedding width. Received: "
                + ", ".join(f"{k}={v}" for k, v in widths.items())
            )
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Training only (see `compile`): the correction clicks' randomness.
        self.refinement_iterations = 0
        self.mask_only_iterations = 0
        self.refinement_seed_generator = keras.random.SeedGenerator(0)

    def build(self, input_shape=None):
        for layer in (
            self.image_encoder,
            self.prompt_encoder,
            self.mask_decoder,
        ):
            if not layer.built:
                layer.build()
        self.built = True

    def encode_image(self, images):
        """`(B, H, W, 3)` pre-processed images -> `(B, He, We, C)`."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings,
        points=None,
        labels=None,
        boxes=None,
        masks=None,
    ) -> dict:
        """Prompts + image embeddings -> `{"masks", "iou_pred"}`."""
        return decode_prompts(
            self.prompt_encoder,
            self.mask_decoder,
            image_embeddings,
            points=points,
            labels=labels,
            boxes=boxes,
            masks=masks,
        )

    def compiled_method(self, method: str):
        """`encode_image` or `decode` as one compiled function (cached).

        JAX: `jax.jit`; TensorFlow: `tf.function`; PyTorch: eager. Used by
        `SAMPredictor`; the inputs are NumPy arrays or None.
        """
        from keras_sam._backend_compile import compile_inference

        cache = self.__dict__.setdefault("_compiled_methods", {})
        if method not in cache:
            cache[method] = compile_inference(self, getattr(self, method))
        return cache[method]

    def call(self, inputs, training=None):
        image_embeddings = self.encode_image(inputs["images"])
        prompts = _prompts(inputs)
        per_image = _prompts_per_image(prompts)
        if per_image is None:
            outputs = self.decode(image_embeddings, **prompts)
        else:
            # (B, K, ...) prompts -> (B * K, ...); image b serves rows b*K..
            flat = {
                k: ops.reshape(v, (-1, *v.shape[2:]))
                for k, v in prompts.items()
            }
            embeddings = ops.repeat(image_embeddings, per_image, axis=0)
            outputs = _split_per_image(
                self.decode(embeddings, **flat), per_image
            )
        if training and self._refinement_rounds:
            outputs["image_embeddings"] = image_embeddings
        return outputs

    @property
    def _refinement_rounds(self) -> int:
        return self.refinement_iterations + self.mask_only_iterations

    def compile(
        self, *args, refinement_iterations=0, mask_only_iterations=0, **kwargs
    ):
        """`keras.Model.compile`, plus SAM's interactive training.

        Args:
            *args, **kwargs: as `keras.Model.compile`.
            refinement_iterations: int >= 0. With `n > 0` (and
                `loss=keras_sam.losses.SAMLoss()`), each training example
                is decoded `1 + n` times on the same image embedding: after
                the data's prompt, each round adds one correction click
                drawn uniformly from the error region of the previous
                round's mask and feeds that mask's logits back as the
                `masks` prompt (SAM's training, appendix A; see
                `keras_sam.refinement`). The loss is the mean over all
                rounds (the data's prompt's included). The randomness comes from
                `refinement_seed_generator` (seed 0 unless re-seeded).
            mask_only_iterations: int >= 0, further rounds that add no
                click (the padding point instead) and only feed the
                previous mask back, so that the model learns to refine its
                own mask: the last round, and `m - 1` at random positions
                among the others, per example (SAM's recipe: 8 click
                rounds and `m = 2`; see
                `keras_sam.refinement.mask_only_rounds`). The same loss
                requirement.
        """
        from keras_sam.layers._checks import integer
        from keras_sam.losses import SAMLoss

        refinement_iterations = integer(
            "refinement_iterations", refinement_iterations, low=0
        )
        mask_only_iterations = integer(
            "mask_only_iterations", mask_only_iterations, low=0
        )
        super().compile(*args, **kwargs)
        for name, value in (
            ("refinement_iterations", refinement_iterations),
            ("mask_only_iterations", mask_only_iterations),
        ):
            if value and not isinstance(self.loss, SAMLoss):
                raise ValueError(
                    f"`{name}` needs `loss=keras_sam.losses.SAMLoss()`. "
                    f"Received: loss={self.loss!r}"
                )
        self.refinement_iterations = refinement_iterations
        self.mask_only_iterations = mask_only_iterations

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """`keras_sam.losses.SAMLoss` needs the whole output dict (the IoU
        target depends on the predicted masks); other losses go the usual
        per-output way. With refinement rounds (see `compile`), the mean
        of the rounds' losses."""
        from keras_sam.losses import SAMLoss

        if not isinstance(self.loss, SAMLoss):
            return super().compute_loss(
                x, y, y_pred, sample_weight, training=training
            )
        outputs = {k: y_pred[k] for k in ("masks", "iou_pred")}
        loss = self.prompt_loss(x, y, outputs, sample_weight)
        if "image_embeddings" in y_pred and self._refinement_rounds:
            losses = self._refinement_losses(
                x, y, outputs, y_pred["image_embeddings"], sample_weight
            )
            loss = (loss + sum(losses)) / (1 + len(losses))
        for extra in self.losses:
            loss = loss + keras.ops.cast(keras.ops.sum(extra), loss.dtype)
        return loss

    def prompt_loss(self, x, y, outputs, sample_weight=None):
        """The compiled `SAMLoss` of one round's `outputs` for the prompts
        of `x`; subclasses may supervise per prompt kind."""
        return self.loss(y, outputs, sample_weight)

    def _refinement_losses(self, x, y, outputs, image_embeddings, weight):
        """The losses of the refinement rounds (see `compile`)."""
        from keras_sam import refinement
        from keras_sam.losses import upsample_logits

        prompts = _prompts(x)
        per_image = _prompts_per_image(prompts)
        flat = lambda v, rank: ops.reshape(v, (-1, *v.shape[-rank:]))  # noqa: E731
        if per_image is not None:
            image_embeddings = ops.repeat(image_embeddings, per_image, axis=0)
        prompts = {k: flat(v, _PROMPT_RANKS[k] - 1) for k, v in prompts.items()}
        targets = flat(y, 2)  # (B', h, w): y is (B, [K,] [1,] h, w)
        masks = flat(outputs["masks"], 3)
        iou_pred = flat(outputs["iou_pred"], 1)
        size = self.prompt_encoder.input_image_size
        has_boxes = "boxes" in prompts
        has_masks = "masks" in prompts  # after round 0: always
        if "labels" not in prompts:
            prompts["points"] = ops.zeros((ops.shape(masks)[0], 0, 2))
            prompts["labels"] = ops.zeros((ops.shape(masks)[0], 0), "int32")
        no_click = refinement.mask_only_rounds(
            ops.shape(masks)[0],
            self.refinement_iterations,
            self.mask_only_iterations,
            self.refinement_seed_generator,
        )  # (rounds, B')
        losses = []
        for round_ in range(self._refinement_rounds):
            labels = prompts["labels"]
            previous = ops.stop_gradient(
                refinement.chosen_mask(
                    masks,
                    iou_pred,
                    refinement.is_ambiguous(labels, has_boxes, has_masks),
                )
            )  # (B', h, w)
            # Clicks on the targets' grid: upsampled logits if it is finer.
            points, new_labels = refinement.sample_correction_points(
                upsample_logits(previous, tuple(targets.shape)[-2:]),
                targets,
                size,
                self.refinement_seed_generator,
            )
            skip = no_click[round_]  # (B',): the padding point instead
            points = ops.where(skip[:, None, None], 0.0, points)
            new_labels = ops.cast(
                ops.where(skip[:, None], -1, new_labels), "int32"
            )
            prompts["points"] = ops.concatenate(
                [ops.cast(prompts["points"], "float32"), points], axis=1
            )
            prompts["labels"] = ops.concatenate(
                [ops.cast(labels, "int32"), new_labels], axis=1
            )
            prompts["masks"] = previous[:, None, :, :, None]
            has_masks = True
            out = self.decode(image_embeddings, **prompts)
            masks, iou_pred = out["masks"], out["iou_pred"]
            if per_image is None:
                round_x = dict(prompts)
            else:
                out = _split_per_image(out, per_image)
                round_x = _split_per_image(prompts, per_image)
            losses.append(self.prompt_loss(round_x, y, out, weight))
        return losses

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                name: keras.saving.serialize_keras_object(getattr(self, name))
                for name in ("image_encoder", "prompt_encoder", "mask_decoder")
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in ("image_encoder", "prompt_encoder", "mask_decoder"):
            if isinstance(config.get(name), dict):
                config[name] = keras.saving.deserialize_keras_object(
                    config[name]
                )
        return cls(**config)

    @classmethod
    def from_config_dicts(
        cls,
        image_encoder: dict,
        prompt_encoder: dict,
        mask_decoder: dict,
        **kwargs,
    ) -> "SAM":
        """Build from the constructor arguments of the three parts."""
        return cls(
            image_encoder=SAMImageEncoder(
                **image_encoder, name="image_encoder"
            ),
            prompt_encoder=SAMPromptEncoder(
                **prompt_encoder, name="prompt_encoder"
            ),
            mask_decoder=SAMMaskDecoder(**mask_decoder, name="mask_decoder"),
            **kwargs,
        )

    @classmethod
    def presets(cls) -> list[str]:
        return sorted(PRESETS)

    @classmethod
    def from_preset(
        cls, name: str, weights: str | os.PathLike | bool | None = None
    ) -> "SAM":
        """A model with a preset architecture.

        Args:
            name: one of `SAM.presets()`.
            weights: None or False for random weights; a path to load an
                official `.pth` or a safetensors file; True for the
                preset's own weights: the bundled file for `sam_shapes`,
                else the official checkpoint, downloaded (cached, verified).
        """
        if name not in PRESETS:
            raise ValueError(
                f"Unknown preset. Received: name={name!r}; available: "
                f"{', '.join(sorted(PRESETS))}"
            )
        preset = PRESETS[name]
        model = cls.from_config_dicts(
            preset["image_encoder"],
            preset["prompt_encoder"],
            preset["mask_decoder"],
            name=name,
        )
        model.build()
        if weights is True and "bundled" in preset:
            path = os.path.join(
                os.path.dirname(os.path.dirname(__file__)), preset["bundled"]
            )
            bundled = cls.from_keras_safetensors(path)
            model.set_weights(bundled.get_weights())
            return model
        if weights is True:
            from keras_sam.download import download

            weights = download(preset["url"], sha256=preset["sha256_prefix"])
        if weights:
            model.load_checkpoint(weights)
        return model

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "SAM":
        """Build a model whose architecture is read from an official
        checkpoint's tensor shapes, and load it."""
        from keras_sam.convert.checkpoint import detect_architecture
        from keras_sam.convert.checkpoint import read_state_dict

        state = read_state_dict(path)
        config = detect_architecture(state)
        model = cls.from_config_dicts(**config)
        model.build()
        model.load_state_dict(state)
        return model

    @classmethod
    def from_keras_safetensors(cls, path: str | os.PathLike) -> "SAM":
        """A model saved by `save_keras_safetensors` (config + weights).

        The file's metadata holds `format = "keras_sam.variable_paths"` and
        the three config dicts; its tensors are keyed by Keras variable path
        (below the model's own name). Every variable must be present with
        its shape, else `ValueError` and nothing is loaded.
        """
        import json

        from keras_sam.convert.checkpoint import read_safetensors_metadata
        from keras_sam.convert.checkpoint import read_state_dict

        metadata = read_safetensors_metadata(path)
        if metadata.get("format") != KERAS_SAFETENSORS_FORMAT:
            raise ValueError(
                f"Not a {KERAS_SAFETENSORS_FORMAT} file. Received: metadata "
                f"format {metadata.get('format')!r} in {path}"
            )
        config = json.loads(metadata["config"])
        model = cls.from_config_dicts(
            config["image_encoder"],
            config["prompt_encoder"],
            config["mask_decoder"],
            name=metadata.get("name", "sam"),
        )
        model.build()
        state = {
            k.split("/", 1)[1] if "/" in k else k: v
            for k, v in read_state_dict(path).items()
        }
        variables = {v.path.split("/", 1)[1]: v for v in model.weights}
        missing = sorted(set(variables) - set(state))
        unexpected = sorted(set(state) - set(variables))
        mismatched = sorted(
            k
            for k in set(state) & set(variables)
            if tuple(state[k].shape) != tuple(variables[k].shape)
        )
        if missing or unexpected or mismatched:
            raise ValueError(
                f"{path} does not match its config; nothing was loaded. "
                f"missing: {missing}, unexpected: {unexpected}, shape "
                f"mismatches: {mismatched}"
            )
        for key, variable in variables.items():
            variable.assign(state[key].astype(variable.dtype))
        return model

    def save_keras_safetensors(self, path: str | os.PathLike) -> None:
        """Config + weights in one safetensors file (atomic write)."""
        import json

        import numpy as np

        from keras_sam.convert.checkpoint import write_safetensors

        config = {
            "image_encoder": _constructor_args(self.image_encoder),
            "prompt_encoder": _constructor_args(self.prompt_encoder),
            "mask_decoder": _constructor_args(self.mask_decoder),
        }
        state = {
            v.path: np.asarray(keras.ops.convert_to_numpy(v), "float32")
            for v in self.weights
        }
        write_safetensors(
            state,
            path,
            metadata={
                "format": KERAS_SAFETENSORS_FORMAT,
                "config": json.dumps(config),
                "name": self.name,
            },
        )

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load an official `.pth` or a safetensors checkpoint file."""
        from keras_sam.convert.checkpoint import read_state_dict

        self.load_state_dict(read_state_dict(path))

    def load_state_dict(self, state_dict) -> None:
        """Load an official `Sam` state dict; all parts or nothing."""
        from keras_sam.convert.weights import load_official_weights

        load_official_weights(self, state_dict)
