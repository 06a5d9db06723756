"""SAM's training step, mixed into `keras_sam.SAM`.

`SAMTrainer` adds to a `keras.Model` that has `prompt_encoder`, `decode`
and SAM's input dict: `compile(refinement_iterations=...,
mask_only_iterations=...)`, and a `compute_loss` that gives `SAMLoss` the
whole output dict and averages the loss over SAM's interactive refinement
rounds (SAM paper, appendix A).
"""

import contextlib

import keras
from keras import ops

from keras_sam.checks import integer
from keras_sam.prompts import PROMPT_RANKS
from keras_sam.prompts import prompt_tensors
from keras_sam.prompts import prompts_per_image
from keras_sam.prompts import split_per_image
from keras_sam.training import refinement
from keras_sam.training.losses import SAMLoss
from keras_sam.training.losses import upsample_logits


class SAMTrainer:
    """The training step of `keras_sam.SAM` (a mixin before `keras.Model`).

    Call `init_training()` from the model's `__init__`.
    """

    def init_training(self) -> None:
        """Training state: no refinement rounds until `compile` asks."""
        self.refinement_iterations = 0
        self.mask_only_iterations = 0
        # The correction clicks' randomness.
        self.refinement_seed_generator = keras.random.SeedGenerator(0)

    @property
    def refinement_rounds(self) -> int:
        """Rounds decoded after the data's prompt (see `compile`)."""
        return self.refinement_iterations + self.mask_only_iterations

    def compile(
        self, *args, refinement_iterations=0, mask_only_iterations=0, **kwargs
    ):
        """`keras.Model.compile`, plus SAM's interactive training.

        Args:
            *args, **kwargs: as `keras.Model.compile`.
            refinement_iterations: int >= 0. With `n > 0` (and
                `loss=keras_sam.SAMLoss()`), each training example
                is decoded `1 + n` times on the same image embedding: after
                the data's prompt, each round adds one correction click
                drawn uniformly from the error region of the previous
                round's mask and feeds that mask's logits back as the
                `masks` prompt (SAM's training, appendix A; see
                `keras_sam.training.refinement`). The loss is the mean over all
                rounds (the data's prompt's included). The randomness comes from
                `refinement_seed_generator` (seed 0 unless re-seeded).
            mask_only_iterations: int >= 0, further rounds that add no
                click (the padding point instead) and only feed the
                previous mask back, so that the model learns to refine its
                own mask: the last round, and `m - 1` at random positions
                among the others, per example (SAM's recipe: 8 click
                rounds and `m = 2`; see
                `keras_sam.training.refinement.mask_only_rounds`). The same loss
                requirement.
        """
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
                    f"`{name}` needs `loss=keras_sam.SAMLoss()`. "
                    f"Received: loss={self.loss!r}"
                )
        self.refinement_iterations = refinement_iterations
        self.mask_only_iterations = mask_only_iterations

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, the optimizer's variables made first (see
        `_build_optimizer`)."""
        self._build_optimizer()
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        """`keras.Model.train_on_batch`, as `fit`."""
        self._build_optimizer()
        return super().train_on_batch(*args, **kwargs)

    def _build_optimizer(self) -> None:
        """Makes the compiled optimizer's variables for the model's
        trainable weights, unless they exist (or the model is unbuilt).

        Keras' TensorFlow trainer leaves this to the first trace of the
        training step when no distribution strategy is set, and a
        `tf.function` that creates variables is traced twice: the whole
        forward and backward pass, so the first `fit` took twice as long
        to start. The JAX and PyTorch trainers build the optimizer the same
        way at the start of `fit`, so there this only comes first.
        """
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or optimizer.built or not self.built:
            return
        scope = (
            self.distribute_strategy.scope()
            if keras.backend.backend() == "tensorflow"
            else contextlib.nullcontext()
        )
        with scope:
            optimizer.build(self.trainable_variables)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """`keras_sam.SAMLoss` needs the whole output dict (the IoU
        target depends on the predicted masks); other losses go the usual
        per-output way. With refinement rounds (see `compile`), the mean
        of the rounds' losses."""
        if not isinstance(self.loss, SAMLoss):
            return super().compute_loss(
                x, y, y_pred, sample_weight, training=training
            )
        outputs = {k: y_pred[k] for k in ("masks", "iou_pred")}
        loss = self.prompt_loss(x, y, outputs, sample_weight)
        if "image_embeddings" in y_pred and self.refinement_rounds:
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
        prompts = prompt_tensors(x)
        per_image = prompts_per_image(prompts)
        flat = lambda v, rank: ops.reshape(v, (-1, *v.shape[-rank:]))  # noqa: E731
        if per_image is not None:
            image_embeddings = ops.repeat(image_embeddings, per_image, axis=0)
        prompts = {k: flat(v, PROMPT_RANKS[k] - 1) for k, v in prompts.items()}
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
        for round_ in range(self.refinement_rounds):
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
                out = split_per_image(out, per_image)
                round_x = split_per_image(prompts, per_image)
            losses.append(self.prompt_loss(round_x, y, out, weight))
        return losses
