"""The small fully connected network of SAM's mask decoder heads."""

import keras

from keras_sam import checks


@keras.saving.register_keras_serializable(package="keras_sam")
class MLP(keras.layers.Layer):
    """`num_layers` Dense layers with an activation between them.

    Widths are `[hidden_dim] * (num_layers - 1) + [output_dim]`; the last layer
    has no activation (SAM's hypernetwork MLPs and IoU head: ReLU, no
    sigmoid). The sublayers are named `layer_0 ... layer_{num_layers-1}`.

    Args:
        hidden_dim: Units of each hidden layer.
        output_dim: Units of the last layer.
        num_layers: Number of Dense layers, at least 1.
        activation: Activation between layers.

    Call arguments:
        x: `(..., D)`.

    Returns:
        `(..., output_dim)`.

    Example:
    >>> mlp = MLP(hidden_dim=8, output_dim=2, num_layers=3)
    >>> tuple(mlp(keras.ops.ones((4, 5))).shape)
    (4, 2)
    """

    def __init__(
        self,
        *,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: str = "relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = checks.integer("hidden_dim", hidden_dim)
        self.output_dim = checks.integer("output_dim", output_dim)
        self.num_layers = checks.integer("num_layers", num_layers)
        self.activation = activation
        widths = [self.hidden_dim] * (self.num_layers - 1) + [self.output_dim]
        self.dense_layers = [
            keras.layers.Dense(
                width, dtype=self.dtype_policy, name=f"layer_{i}"
            )
            for i, width in enumerate(widths)
        ]
        self._activation_fn = keras.activations.get(activation)

    def build(self, input_shape):
        width = input_shape[-1]
        for layer in self.dense_layers:
            layer.build((None, width))
            width = layer.units

    def call(self, x):
        for i, layer in enumerate(self.dense_layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = self._activation_fn(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "output_dim": self.output_dim,
                "num_layers": self.num_layers,
                "activation": self.activation,
            }
        )
        return config
