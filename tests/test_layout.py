"""The package's layout rules, checked on the source (no imports run).

Rooms by concern with arrows pointing down (`ROOMS`, lowest first): a module
imports only from its own room or rooms below it, no module imports another
module's `_private` names, and only the backend helpers import JAX,
TensorFlow or PyTorch (plus the checkpoint reader, which uses
`torch.load(weights_only=True)` for `.pth` files).
"""

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "keras_sam"

# Lowest first; a module may import from its own room and the rooms before.
ROOMS = (
    "lazy",
    "io",
    "backend",
    "checks",
    "prompts",
    "layers",
    "inference",
    "training",
    "convert",
    "models",
    "export",
    "visualize",
    "serve",
    "bulk",
    "cli",
)
BACKENDS = ("jax", "tensorflow", "torch")
BACKEND_IMPORTERS = {"backend", "convert.checkpoint"}
# The exporters' converters and runtime, and the only modules using them.
EXPORT_IMPORTERS = {
    "onnx": {"backend.export"},
    "tf2onnx": {"backend.export"},
    "onnxruntime": {"export.onnx_predictor"},
}

# Ray (and the pyarrow it brings), and the only modules using them.
BULK_IMPORTERS = {
    "ray": {"bulk.pipeline"},
    "pyarrow": {"bulk.listing", "bulk.outputs"},
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(("keras_sam",) + parts)] = path
    return out


MODULES = _modules()


def _imports(path: pathlib.Path):
    """(imported module, imported names) of every import, at any depth."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, tuple(a.name for a in node.names)


def _resolve(module: str, names: tuple) -> list[str]:
    """The keras_sam modules an import statement loads."""
    if not module.startswith("keras_sam"):
        return []
    found = [module] if module in MODULES else []
    found += [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    """Module -> the keras_sam modules it imports, without its own
    ancestor packages (Python imports those first whatever the module
    says, so `from keras_sam.convert import torch_mapping` inside the
    `convert` room is an edge to `torch_mapping` only)."""
    return {
        name: {
            target
            for module, names in _imports(path)
            for target in _resolve(module, names)
            if target != name and not name.startswith(target + ".")
        }
        for name, path in MODULES.items()
    }


def test_every_module_belongs_to_a_room():
    rooms = {_room(m) for m in MODULES} - {""}
    assert rooms <= set(ROOMS), sorted(rooms - set(ROOMS))


def test_imports_point_down():
    wrong = []
    for module, targets in _graph().items():
        if module == "keras_sam":
            continue  # the package's lazy table names every room
        own = ROOMS.index(_room(module))
        for target in targets:
            if ROOMS.index(_room(target)) > own:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_import_circles():
    graph = _graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_private_names_across_modules():
    wrong = []
    for name, path in MODULES.items():
        for module, names in _imports(path):
            if not module.startswith("keras_sam"):
                continue
            private = [p for p in module.split(".") if p.startswith("_")]
            private += [n for n in names if n.startswith("_")]
            if private:
                wrong.append(f"{name}: {module} {private}")
    assert not wrong, wrong


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_backend_helpers_import_a_backend(backend):
    wrong = []
    for name, path in MODULES.items():
        local = name.removeprefix("keras_sam.")
        if local.split(".")[0] in BACKEND_IMPORTERS or local in (
            BACKEND_IMPORTERS
        ):
            continue
        for module, _ in _imports(path):
            if module.split(".")[0] == backend:
                wrong.append(name)
    assert not wrong, wrong


@pytest.mark.parametrize("package", sorted(EXPORT_IMPORTERS | BULK_IMPORTERS))
def test_only_the_exporters_import_onnx(package):
    # and only the bulk runs import Ray
    importers = (EXPORT_IMPORTERS | BULK_IMPORTERS)[package]
    wrong = [
        name
        for name, path in MODULES.items()
        if name.removeprefix("keras_sam.") not in importers
        and any(m.split(".")[0] == package for m, _ in _imports(path))
    ]
    assert not wrong, wrong


def test_onnx_predictor_needs_no_keras():
    """`OnnxPredictor` runs where Keras is not installed: its module and
    the keras_sam modules it imports import neither Keras nor a backend."""
    graph = _graph()
    seen, todo = set(), ["keras_sam.export.onnx_predictor"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph[name])
    wrong = [
        f"{name}: {module}"
        for name in sorted(seen)
        for module, _ in _imports(MODULES[name])
        if module.split(".")[0] in ("keras",) + BACKENDS
    ]
    assert not wrong, wrong
