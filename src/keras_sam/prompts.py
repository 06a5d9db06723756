"""The prompt tensors' conventions shared by the model and training.

SAM's prompt tensors (`SAMPromptEncoder`'s call arguments) have a batch axis
`B`; in training, `SAM` also takes `K` prompts per image as an extra axis
after it. The helpers here tell the two apart and convert between them.
Users' prompts (pixels of their picture) are checked in
`keras_sam.inference.user_prompts`.
"""

from keras import ops

# Rank of each prompt tensor with one prompt per image; one more means `K`
# prompts per image.
PROMPT_RANKS = {"points": 3, "labels": 2, "boxes": 4, "masks": 5}


def prompt_tensors(inputs: dict) -> dict:
    """The prompt tensors of a model input dict (all but `images`)."""
    return {k: v for k, v in inputs.items() if k != "images" and v is not None}


def split_per_image(tensors: dict, per_image: int) -> dict:
    """`(B * K, ...)` tensors -> `(B, K, ...)`: rows `b*K..` of image `b`."""
    return {
        k: ops.reshape(v, (-1, per_image, *v.shape[1:]))
        for k, v in tensors.items()
    }


def prompts_per_image(prompts: dict) -> int | None:
    """None (one prompt per image) or `K` of `(B, K, ...)` prompt tensors."""
    unknown = [
        k for k, v in prompts.items() if getattr(v.shape, "rank", 0) is None
    ]
    if unknown:
        # TensorFlow's `fit` generalises a traced step to unknown ranks when
        # it sees prompts of another layout; a new compile traces afresh.
        raise ValueError(
            "The prompts' rank is unknown, so one prompt per image cannot be "
            "told from K per image. With the TensorFlow backend this "
            "happens when one compiled model is fitted on prompts of two "
            "layouts: call `model.compile(...)` again before fitting with "
            f"the new layout. Received: unknown rank for {', '.join(unknown)}"
        )
    extra = {
        name: len(value.shape) - PROMPT_RANKS[name]
        for name, value in prompts.items()
        if name in PROMPT_RANKS
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
