"""Lazy public names of a package (PEP 562).

Importing `keras_sam` or `keras_sam.models` (e.g. by the `keras-sam` command
line, to list the presets) must not import Keras before `--backend` has
chosen the backend; their public names are imported on first access.
"""

import importlib


def exports(package: str, names: dict[str, str], namespace: dict):
    """`(__getattr__, __dir__)` for `package`, whose public `names` (name ->
    module that defines it; a module itself when its name ends with the
    public name) are imported on first access and then cached in the
    package's `namespace`."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(
                f"module {package!r} has no attribute {name!r}"
            )
        module = importlib.import_module(names[name])
        value = (
            module if module.__name__.endswith(name) else getattr(module, name)
        )
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
