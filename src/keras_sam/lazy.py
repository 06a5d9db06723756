"""Lazy public names of a package (PEP 562).

Importing `keras_sam` or `keras_sam.models` (e.g. by the `keras-sam` command
line, to list the presets) must not import Keras before `--backend` has
chosen the backend; their public names are imported on first access.
"""

import importlib
import importlib.util


def exports(package: str, names: dict[str, str], namespace: dict):
    """`(__getattr__, __dir__)` for `package`, whose public `names` (name ->
    module that defines it; a module itself when its name ends with the
    public name) are imported on first access and then cached in the
    package's `namespace`; its submodules are imported on first access
    too."""

    def __getattr__(name: str):
        if name not in names:
            # A submodule (`keras_sam.models.sam`) is an attribute too, as
            # when the package imported it eagerly.
            if importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(
                    f"module {package!r} has no attribute {name!r}"
                )
            return importlib.import_module(f"{package}.{name}")
        module = importlib.import_module(names[name])
        value = (
            module if module.__name__.endswith(name) else getattr(module, name)
        )
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
