"""Backend helpers: the only modules of keras-sam that import JAX,
TensorFlow or PyTorch directly (`compile`: compiled inference and fused
element-wise work; `device`: whether the backend computes on an
accelerator; `tracing`: whether a tensor is a trace placeholder; `export`:
the exporters' TensorFlow side; `variables`: building a model without
values and handing loaded weights to the backend)."""
