"""The whole Segment Anything Model: image encoder, prompt encoder, decoder."""

import contextlib
import gc
import os

import keras
import numpy as np
from keras import ops

from keras_sam.convert.checkpoint import KERAS_SAFETENSORS_FORMAT
from keras_sam.layers.mask_decoder import SAMMaskDecoder
from keras_sam.layers.prompt_encoder import SAMPromptEncoder
from keras_sam.models.image_encoder import SAMImageEncoder
from keras_sam.models.precision import dtype_policy
from keras_sam.models.precision import precision_of_policy
from keras_sam.models.presets import PRESETS
from keras_sam.models.tiny_vit import TinyViTImageEncoder
from keras_sam.prompts import prompt_tensors
from keras_sam.prompts import prompts_per_image
from keras_sam.prompts import split_per_image
from keras_sam.training.trainer import SAMTrainer


def use_compile_cache() -> None:
    """Keep the backend's compiled programs in the user cache folder
    (`keras_sam.backend.compile.use_persistent_cache` in
    `keras_sam.convert.cache.compiled_dir()`), unless the caches are turned
    off (`$KERAS_SAM_NO_CACHE=1`). Done once per process, before the first
    model is built or compiled (JAX's only; see `use_persistent_cache`)."""
    global _COMPILE_CACHE_SET
    if _COMPILE_CACHE_SET:
        return
    _COMPILE_CACHE_SET = True
    from keras_sam.backend.compile import use_persistent_cache
    from keras_sam.convert import cache

    if cache.enabled():
        use_persistent_cache(cache.compiled_dir())


_COMPILE_CACHE_SET = False


@contextlib.contextmanager
def _collection_paused():
    """No cyclic garbage collection in the block: building a model makes
    thousands of objects, and each collection would walk every object of
    the imported frameworks (0.5-0.9 s of loading ViT-B on TensorFlow).
    Nothing is lost: collection resumes after the block."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    image_positional_embeddings=None,
) -> dict:
    """Prompt encoder then mask decoder, sharing the image side.

    Without mask prompts every row of the dense prompt embedding is the same
    "no mask" vector; for a batch-1 image only one row is passed on, so the
    decoder projects the image side of its first block once for all `B`
    prompts instead of once each (same result, see
    `MultiHeadAttentionWithDownsampling`). `image_positional_embeddings`,
    `(1, He, We, C)`, replaces the prompt encoder's
    `"prompt_dense_positional_embeddings"` when given (see
    `SAM.image_positional_embeddings`); a compiled caller then does not
    compute them (the unused computation is pruned).

    Returns:
        The decoder's dict: `"masks"` `(B, 1 + n, 4He, 4We)`, `"iou_pred"`
        `(B, 1 + n)`.
    """
    prompts = prompt_encoder(
        points=points, labels=labels, boxes=boxes, masks=masks
    )
    if image_positional_embeddings is not None:
        prompts["prompt_dense_positional_embeddings"] = (
            image_positional_embeddings
        )
    if masks is None and image_embeddings.shape[0] == 1:
        dense = prompts["prompt_dense_embeddings"]
        prompts["prompt_dense_embeddings"] = dense[:1]
    return mask_decoder(image_embeddings=image_embeddings, **prompts)


def image_encoder_class(config: dict) -> type:
    """The image encoder class whose constructor arguments `config` holds:
    `TinyViTImageEncoder` (MobileSAM) for per-stage `hidden_sizes`, else
    `SAMImageEncoder`."""
    return TinyViTImageEncoder if "hidden_sizes" in config else SAMImageEncoder


@keras.saving.register_keras_serializable(package="keras_sam")
class SAM(SAMTrainer, keras.Model):
    """Segment Anything Model: image encoder + prompt encoder + mask decoder.

    The expensive image encoder runs once per image (`encode_image`); the
    prompt encoder and the decoder run once per prompt batch (`decode`).
    `call` chains the three.

    Args:
        image_encoder: a `SAMImageEncoder` or (MobileSAM) a
            `TinyViTImageEncoder`.
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
        image_encoder: SAMImageEncoder | TinyViTImageEncoder,
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
        self.init_training()

    def build(self, input_shape=None):
        for layer in (
            self.image_encoder,
            self.prompt_encoder,
            self.mask_decoder,
        ):
            if not layer.built:
                layer.build()
        self.built = True

    @property
    def precision(self) -> str:
        """`"float32"` or `"bfloat16"` (`keras_sam.models.precision`): the
        image encoder's compute precision."""
        return precision_of_policy(self.image_encoder.dtype_policy.name)

    def encode_image(self, images):
        """`(B, H, W, 3)` pre-processed images -> `(B, He, We, C)` float32."""
        # float32 out whatever the policy: embeddings are stored and compared
        # as float32, and NumPy has no bfloat16.
        return ops.cast(self.image_encoder(images), "float32")

    def decode(
        self,
        image_embeddings,
        points=None,
        labels=None,
        boxes=None,
        masks=None,
        image_positional_embeddings=None,
    ) -> dict:
        """Prompts + image embeddings -> `{"masks", "iou_pred"}` float32.

        `image_positional_embeddings`: the prompt encoder's positional
        encoding of the embedding grid, `(1, He, We, C)`, if already at hand
        (`image_positional_embeddings()`); computed here otherwise.
        """
        out = decode_prompts(
            self.prompt_encoder,
            self.mask_decoder,
            image_embeddings,
            points=points,
            labels=labels,
            boxes=boxes,
            masks=masks,
            image_positional_embeddings=image_positional_embeddings,
        )
        return {k: ops.cast(v, "float32") for k, v in out.items()}

    def image_positional_embeddings(self):
        """The prompt encoder's positional encoding of the image embedding
        grid, `(1, He, We, C)` in its compute dtype.

        It depends on the weights alone (the random-frequency matrix), so
        it is computed once and kept while that matrix holds the same
        values; the compiled `decode` takes it from here instead of
        evaluating its ~10^6 sines and cosines with every prompt (on JAX's
        CPU backend, which calls the C library for each one, ~7 ms of a
        ~48 ms ViT-B decode). The official ONNX export folds it into a
        constant likewise.
        """
        encoding = self.prompt_encoder.positional_embedding_layer
        matrix = ops.convert_to_numpy(
            encoding.positional_encoding_gaussian_matrix
        )
        kept = self.__dict__.get("_image_positional_embeddings")
        if kept is None or not np.array_equal(kept[0], matrix):
            kept = (matrix, self._encode_grid()[None])
            # Set past Keras' attribute tracking, as `_compiled_methods`.
            self.__dict__["_image_positional_embeddings"] = kept
        return kept[1]

    def _encode_grid(self):
        # One compiled program: op by op, JAX compiles each of its ~15
        # operations on the first call (0.7 s).
        from keras_sam.backend.compile import compile_inference

        encode = self.__dict__.get("_compiled_grid_encoding")
        if encode is None:
            encoding = self.prompt_encoder.positional_embedding_layer
            size = self.prompt_encoder.image_embedding_size
            encode = compile_inference(
                encoding, lambda: encoding.encode_image(size)
            )
            self.__dict__["_compiled_grid_encoding"] = encode
        return encode()

    def compiled_method(self, method: str):
        """`encode_image` or `decode` as one compiled function (cached).

        JAX: `jax.jit`; TensorFlow: `tf.function`; PyTorch: eager. Used by
        `SAMPredictor`; the inputs are NumPy arrays or None. `decode` gets
        `image_positional_embeddings()` unless given them.
        """
        from keras_sam.backend.compile import compile_inference

        use_compile_cache()
        cache = self.__dict__.setdefault("_compiled_methods", {})
        if method not in cache:
            # Only the variables the method reads go to JAX's program as
            # arguments (every one passed costs per call).
            layers = {
                "encode_image": [self.image_encoder],
                "decode": [self.prompt_encoder, self.mask_decoder],
            }[method]
            compiled = compile_inference(layers, getattr(self, method))
            if method == "decode":
                compiled = self._with_positional_embeddings(compiled)
            cache[method] = compiled
        return cache[method]

    def _with_positional_embeddings(self, decode):
        def call(image_embeddings, **prompts):
            if prompts.get("image_positional_embeddings") is None:
                prompts["image_positional_embeddings"] = (
                    self.image_positional_embeddings()
                )
            return decode(image_embeddings, **prompts)

        return call

    def call(self, inputs, training=None):
        image_embeddings = self.encode_image(inputs["images"])
        prompts = prompt_tensors(inputs)
        per_image = prompts_per_image(prompts)
        if per_image is None:
            outputs = self.decode(image_embeddings, **prompts)
        else:
            # (B, K, ...) prompts -> (B * K, ...); image b serves rows b*K..
            flat = {
                k: ops.reshape(v, (-1, *v.shape[2:]))
                for k, v in prompts.items()
            }
            embeddings = ops.repeat(image_embeddings, per_image, axis=0)
            outputs = split_per_image(
                self.decode(embeddings, **flat), per_image
            )
        if training and self.refinement_rounds:
            outputs["image_embeddings"] = image_embeddings
        return outputs

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
        precision: str = "float32",
        **kwargs,
    ) -> "SAM":
        """Build from the constructor arguments of the three parts, the
        image encoder and the decoder in `precision` (see `from_preset`)."""
        policy = dtype_policy(precision)
        return cls(
            image_encoder=image_encoder_class(image_encoder)(
                **image_encoder, dtype=policy, name="image_encoder"
            ),
            prompt_encoder=SAMPromptEncoder(
                **prompt_encoder, name="prompt_encoder"
            ),
            mask_decoder=SAMMaskDecoder(
                **mask_decoder, dtype=policy, name="mask_decoder"
            ),
            **kwargs,
        )

    @classmethod
    def presets(cls) -> list[str]:
        return sorted(PRESETS)

    @classmethod
    def from_preset(
        cls,
        name: str,
        weights: str | os.PathLike | bool | None = None,
        precision: str = "float32",
    ) -> "SAM":
        """A model with a preset architecture.

        Args:
            name: one of `SAM.presets()`.
            weights: None or False for random weights; a path to load an
                official `.pth` or a safetensors file; True for the
                preset's own weights: the bundled file for `sam_shapes`,
                else the official checkpoint, downloaded (cached, verified).
            precision: `"float32"`, or `"bfloat16"` (also `"bf16"`): the
                image encoder and the decoder compute in bfloat16 (Keras'
                `mixed_bfloat16`; weights stay float32, outputs are float32).
                It pays only where the hardware has bfloat16 matrix
                instructions; docs/precision.md has speed and agreement.
        """
        dtype_policy(precision)  # a bad value fails before any download
        if name not in PRESETS:
            raise ValueError(
                f"Unknown preset. Received: name={name!r}; available: "
                f"{', '.join(sorted(PRESETS))}"
            )
        preset = PRESETS[name]
        use_compile_cache()
        if weights is True and "bundled" not in preset:
            # Before building: a failed download fails at once.
            from keras_sam.convert.download import download

            weights = download(
                preset["url"], sha256=preset["sha256"], size=preset["size"]
            )
        model = cls.from_config_dicts(
            preset["image_encoder"],
            preset["prompt_encoder"],
            preset["mask_decoder"],
            precision=precision,
            name=name,
        )
        if weights and weights is not True:
            from keras_sam.backend.variables import build_without_values
            from keras_sam.backend.variables import discard_pending
            from keras_sam.backend.variables import initialize_pending

            # No random values drawn for weights about to be loaded.
            with _collection_paused():
                build_without_values(model)
                try:
                    model.load_checkpoint(weights)
                except BaseException:
                    discard_pending(model)
                    raise
                initialize_pending()
            return model
        model.build()
        if weights is True:  # the bundled file
            path = os.path.join(
                os.path.dirname(os.path.dirname(__file__)), preset["bundled"]
            )
            bundled = cls.from_keras_safetensors(path)
            model.set_weights(bundled.get_weights())
        return model

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        mask_decoder_num_heads: int | None = None,
        use_cache: bool = True,
        precision: str = "float32",
    ) -> "SAM":
        """Build a model whose architecture is read from a checkpoint, and
        load it.

        An official checkpoint (`.pth`, `.pt`, `.bin`, or `.safetensors`
        with the official tensor names) gives its architecture by its tensor
        shapes (`keras_sam.convert.checkpoint.detect_architecture`); a
        keras-sam safetensors file (`save_keras_safetensors`, such as the
        bundled `sam_shapes` weights) by the config it stores. A Hugging
        Face `SamModel` checkpoint (its folder or weights file) and a
        KerasHub SAM preset folder load too (`keras_sam.convert.formats`,
        docs/checkpoints.md). The file is
        read safely (`keras_sam.convert.checkpoint.read_state_dict`): nothing
        in it runs, and sizes the file cannot hold, weights that are not
        finite floats, and architectures beyond twice ViT-H's are refused
        before the model is built.

        A PyTorch file is read through the cache of checkpoints already read
        (`use_cache`), and the backend's persistent compilation cache is
        switched on (`use_compile_cache`); docs/cache.md has both.

        The decoder's head count is in no weight shape. With the wrong count
        the weights still load (every shape is the same) and the model runs,
        but its masks are silently wrong: a checkpoint trained with a 4-head
        decoder must be loaded with `mask_decoder_num_heads=4`.

        Args:
            path: The checkpoint file or folder.
            mask_decoder_num_heads: Attention heads of the mask decoder's
                two-way transformer. None: 8, the value of every official
                checkpoint; for a keras-sam file, a Hugging Face
                `config.json` or a KerasHub preset, the value it stores (a
                different one is refused).
            use_cache: Whether a PyTorch file is read through the cache of
                checkpoints already read (`keras_sam.convert.cache`: the
                tensors as safetensors in the user cache folder, used only
                when they verify; `$KERAS_SAM_NO_CACHE=1` turns it off
                everywhere). It gives the same weights as the file.
            precision: `"float32"` or `"bfloat16"`, as in `from_preset`.

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: naming the file: it is corrupt or unsafe, is not a
                SAM checkpoint, or its weights do not fit the architecture.
        """
        from keras_sam.backend.variables import build_without_values
        from keras_sam.backend.variables import discard_pending
        from keras_sam.backend.variables import initialize_pending
        from keras_sam.convert import checkpoint

        dtype_policy(precision)  # a bad value fails before the file is read
        use_compile_cache()
        name = str(path)
        if (
            os.path.isfile(path)
            and checkpoint.safetensors_format(path) == KERAS_SAFETENSORS_FORMAT
        ):
            # Config, tensors and sizes checked before anything is built.
            config = checkpoint.read_metadata_config(
                path, checkpoint.read_state_dict(path)
            )
            stored = config["mask_decoder"].get("num_heads")
            if mask_decoder_num_heads not in (None, stored):
                raise ValueError(
                    f"`mask_decoder_num_heads` disagrees with the {stored} "
                    f"heads stored in checkpoint {name!r}. Received: "
                    f"mask_decoder_num_heads={mask_decoder_num_heads}"
                )

            def build(path):
                return cls.from_keras_safetensors(path, precision=precision)

        else:
            from keras_sam.convert.formats import read_checkpoint_then

            # Official, Hugging Face or KerasHub: official names and config.
            def build_from(found):
                model = cls.from_config_dicts(
                    **found.config, precision=precision
                )
                # No random values drawn for weights about to be loaded.
                build_without_values(model)
                try:
                    model.load_state_dict(found.state)
                except BaseException:
                    discard_pending(model)
                    raise
                initialize_pending()
                return model

            def build(path):
                # A cached entry is verified while the model is built from
                # it (the model is returned only if it verifies).
                return read_checkpoint_then(
                    path,
                    build_from,
                    mask_decoder_num_heads=mask_decoder_num_heads,
                    use_cache=use_cache,
                )

        try:
            with _collection_paused():
                return build(path)
        except (TypeError, ValueError) as e:
            if isinstance(e, ValueError) and name in str(e):
                raise
            raise ValueError(
                f"Cannot build a SAM from checkpoint {name!r}: {e}"
            ) from e

    @classmethod
    def from_keras_safetensors(
        cls, path: str | os.PathLike, precision: str = "float32"
    ) -> "SAM":
        """A model saved by `save_keras_safetensors` (config + weights),
        computing in `precision` (see `from_preset`).

        The file's metadata holds `format = "keras_sam.variable_paths"` and
        the three config dicts; its tensors are keyed by Keras variable path
        (below the model's own name). Every variable must be present with
        its shape, else `ValueError` and nothing is loaded.
        """
        import json

        import numpy as np

        from keras_sam.backend.variables import build_without_values
        from keras_sam.backend.variables import discard_pending
        from keras_sam.backend.variables import initialize_pending
        from keras_sam.backend.variables import set_initial_value
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
            precision=precision,
            name=metadata.get("name", "sam"),
        )
        state = {
            k.split("/", 1)[1] if "/" in k else k: v
            for k, v in read_state_dict(path).items()
        }
        # No random values drawn for weights about to be loaded.
        build_without_values(model)
        try:
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
                if not set_initial_value(variable, state[key]):
                    variable.assign(
                        np.array(state[key], dtype=variable.dtype, order="C")
                    )
        except BaseException:
            discard_pending(model)
            raise
        initialize_pending()
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
        """Load an official checkpoint (`.pth`, `.pt`, `.bin`, or
        `.safetensors` with the official tensor names); all parts or
        nothing. The file is read safely (see `from_checkpoint`); a
        `ValueError` names it when it is corrupt or unsafe or its weights do
        not fit this model. A PyTorch file is read through the cache of
        checkpoints already read, as in `from_checkpoint`."""
        from keras_sam.convert.cache import read_checkpoint

        state = read_checkpoint(path)
        try:
            self.load_state_dict(state)
        except ValueError as e:
            raise ValueError(
                f"Checkpoint {str(path)!r} does not fit this model: {e}"
            ) from e

    def load_state_dict(self, state_dict) -> None:
        """Load an official `Sam` state dict; all parts or nothing."""
        from keras_sam.convert.weights import load_official_weights

        load_official_weights(self, state_dict)
