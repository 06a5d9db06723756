"""Loading official PyTorch SAM weights into keras-sam layers."""

from collections.abc import Mapping

import numpy as np

from keras_sam.convert import image_encoder_mapping
from keras_sam.convert import tiny_vit_mapping
from keras_sam.convert import torch_mapping
from keras_sam.convert.checkpoint import as_array

# Target class name -> (prefix of its keys in a whole official `Sam`,
# table). Targets are matched by class name (their own or a base class's),
# so that conversion needs nothing from `keras_sam.models`, which loads
# checkpoints through it.
_TARGETS = {
    "SAMPromptEncoder": (
        "prompt_encoder.",
        torch_mapping.prompt_encoder_table,
    ),
    "SAMMaskDecoder": ("mask_decoder.", torch_mapping.mask_decoder_table),
    "SAMImageEncoder": (
        "image_encoder.",
        image_encoder_mapping.image_encoder_table,
    ),
    "TinyViTImageEncoder": ("image_encoder.", tiny_vit_mapping.tiny_vit_table),
}
_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def _is_composite(target) -> bool:
    """Whether `target` is a whole SAM (its three parts as attributes)."""
    return all(hasattr(target, part) for part in _PARTS) and not any(
        cls.__name__ in _TARGETS for cls in type(target).__mro__
    )


def _select(state_dict: Mapping, prefix: str) -> dict:
    """The target's own entries: those under `prefix` if any, else all."""
    keys = list(state_dict)
    if any(k.startswith(prefix) for k in keys):
        return {
            k[len(prefix) :]: state_dict[k]
            for k in keys
            if k.startswith(prefix)
        }
    return dict(state_dict)


def _relative_paths(target) -> dict:
    """Keras variables of `target` keyed by their path below it."""
    base = target.path + "/"
    out = {}
    for variable in target.weights:
        path = variable.path
        out[path[len(base) :] if path.startswith(base) else path] = variable
    return out


def load_official_weights(target, state_dict: Mapping) -> None:
    """Load official PyTorch SAM weights into a keras-sam layer or model.

    The mapping goes by name through one declarative table
    (`keras_sam.convert.torch_mapping`), never by parameter order. Every
    source key must be used exactly once and every Keras variable assigned
    exactly once, with equal shapes; otherwise nothing is assigned and a
    `ValueError` lists the missing, unexpected and mismatched keys.

    Args:
        target: a `SAMPromptEncoder`, `SAMMaskDecoder`, `SAMImageEncoder` or
            a whole `keras_sam.SAM`; built here if needed.
        state_dict: official parameter names to NumPy arrays or torch
            tensors: the module's own names
            (`transformer.layers.0.self_attn.q_proj.weight`) or those of a
            whole official `Sam` (`mask_decoder.transformer...`), whose
            entries for other modules are then ignored (for a whole `SAM`
            target every entry must be used).

    Raises:
        ValueError: unsupported target, or keys that do not match.

    Example:
    >>> decoder = keras_sam.SAMMaskDecoder(
    ...     hidden_size=256, num_layers=2, intermediate_dim=2048, num_heads=8)
    >>> keras_sam.load_official_weights(decoder, official_sam.state_dict())
    ... # doctest: +SKIP
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            "`state_dict` must be a mapping of parameter names to arrays. "
            f"Received: state_dict of type {type(state_dict).__name__}"
        )
    if _is_composite(target):
        if not target.built:
            target.build()
        parts = [
            (target.image_encoder, "image_encoder."),
            (target.prompt_encoder, "prompt_encoder."),
            (target.mask_decoder, "mask_decoder."),
        ]
        plans, problems = [], []
        for part, prefix in parts:
            source = {
                k[len(prefix) :]: v
                for k, v in state_dict.items()
                if k.startswith(prefix)
            }
            table = _entry(part)[1](part)
            assignments, errors = _plan(part, source, table)
            plans += assignments
            problems += [f"{part.name}: {e}" for e in errors]
        stray = sorted(
            k
            for k in state_dict
            if not k.startswith(tuple(p for _, p in parts))
        )
        if stray:
            problems.append(
                f"unexpected keys ({len(stray)}): " + ", ".join(stray)
            )
        _apply(target, plans, problems)
        return
    entry = _entry(target)
    prefix, make_table = entry
    source = _select(state_dict, prefix)
    if not target.built:
        target.build()
    load_with_table(target, source, make_table(target))


def _entry(target):
    entry = next(
        (
            _TARGETS[cls.__name__]
            for cls in type(target).__mro__
            if cls.__name__ in _TARGETS
        ),
        None,
    )
    if entry is None:
        supported = ", ".join(_TARGETS)
        raise ValueError(
            f"`target` must be one of {supported} or SAM. "
            f"Received: target of type {type(target).__name__}"
        )
    return entry


def load_with_table(target, source: Mapping, table) -> None:
    """Assign `source` arrays to `target`'s variables through `table` rows.

    All-or-nothing: every row's key must be in `source`, every `source` key
    used, every variable of `target` covered, shapes equal; otherwise a
    `ValueError` lists what is wrong and nothing is assigned.

    Args:
        target: a built Keras layer.
        source: official parameter names (as in `table`) to arrays/tensors.
        table: `torch_mapping.Row`s with paths relative to `target`.
    """
    assignments, problems = _plan(target, source, table)
    _apply(target, assignments, problems)


def _plan(target, source: Mapping, table) -> tuple[list, list[str]]:
    """Match `table` against `source` and `target`'s variables.

    Returns the `(variable, array)` assignments and the problems found.
    """
    variables = _relative_paths(target)
    missing, mismatched, unassigned, unknown = [], [], [], []
    assignments = []
    used = set()
    for row in table:
        if row.transform == torch_mapping.UNUSED:
            # A key the source model keeps but never uses: consumed if
            # there, assigned to nothing.
            if row.torch_key in source:
                used.add(row.torch_key)
            continue
        variable = variables.get(row.keras_path)
        if variable is None:
            unknown.append(row.keras_path)
            continue
        if row.torch_key not in source:
            missing.append(row.torch_key)
            continue
        used.add(row.torch_key)
        value = torch_mapping.TRANSFORMS[row.transform](
            as_array(row.torch_key, source[row.torch_key])
        )
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{row.torch_key}: {tuple(value.shape)} (after "
                f"{row.transform}) vs {row.keras_path}: "
                f"{tuple(variable.shape)}"
            )
            continue
        assignments.append((variable, value))
    unexpected = sorted(set(source) - used - set(missing))
    covered = {row.keras_path for row in table if row.keras_path}
    unassigned += sorted(set(variables) - covered)
    problems = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
        ("Keras variables without a source", unassigned),
        ("table paths that are no Keras variable", unknown),
    ):
        if items:
            problems.append(f"{title} ({len(items)}): " + ", ".join(items))
    return assignments, problems


def _apply(target, assignments, problems) -> None:
    if problems:
        raise ValueError(
            f"`state_dict` does not match {type(target).__name__} "
            f"'{target.name}'; nothing was loaded. " + "; ".join(problems)
        )
    from keras_sam.backend.variables import initialize_pending
    from keras_sam.backend.variables import set_initial_value

    for variable, value in assignments:
        # A variable built by `build_without_values` gets the value as its
        # first one (no random values drawn); the transforms give views,
        # copied one variable at a time.
        if not set_initial_value(variable, value):
            variable.assign(np.array(value, dtype=variable.dtype, order="C"))
    initialize_pending()
