"""Training: SAM's losses, refinement rounds, the training step that `SAM`
mixes in, the synthetic shapes dataset, and evaluation."""
