"""Backend helpers: the only modules of keras-sam that import JAX,
TensorFlow or PyTorch directly (`compile`: compiled inference and fused
element-wise work; `tracing`: whether a tensor is a trace placeholder)."""
