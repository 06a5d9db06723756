"""The numeric precision a SAM computes in: float32, or bfloat16 (opt-in).

`"bfloat16"` is Keras' `mixed_bfloat16` dtype policy for the image encoder
and the mask decoder: their variables stay float32 (so loading, saving and
fingerprints see the same weights) and their matrix products run in
bfloat16. The prompt encoder stays float32: its random Fourier features
need float32 to place points to the pixel. What the model returns is cast
to float32. docs/precision.md has the measured agreement and speed.
"""

PRECISIONS = ("float32", "bfloat16")

# Spellings accepted for each precision (the command line says `bf16`).
_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}

_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def check_precision(precision: str) -> str:
    """`precision` as one of `PRECISIONS` (`"bf16"` and `"fp32"` are
    accepted too).

    Raises:
        ValueError: any other value.
    """
    name = _ALIASES.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(
            "`precision` must be one of "
            f"{', '.join(PRECISIONS)} (or bf16, fp32). Received: "
            f"precision={precision!r}"
        )
    return name


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy name of the image encoder and the decoder for
    `precision` (`"float32"` or `"mixed_bfloat16"`)."""
    return _POLICIES[check_precision(precision)]


def precision_of_policy(policy_name: str) -> str:
    """The precision whose `dtype_policy` is `policy_name`; a policy of no
    precision here (set by hand, e.g. `mixed_float16`) is returned as is."""
    for precision, policy in _POLICIES.items():
        if policy == policy_name:
            return precision
    return policy_name
