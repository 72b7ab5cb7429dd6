"""The package's layers import only downward, and the flow core stays free of click, PIL, NumPy.

Every import in every module is read from its source (top-level and inside functions alike), so a
lazy import that climbs a layer fails here as surely as one at the top of the file.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "missingglow")

# lowest first; a module may import its own layer and the layers below it
LAYERS = [
    {"errors", "atomic", "seeding", "progress", "_C"},
    {"flow"},
    {"completion"},
    {"data"},
    {"render"},
    {"training"},
    {"analysis"},
    {"api"},
    {"selfcheck"},
    {"cli", "__main__"},
]
ONLY_IN = {"click": {"cli", "progress"}}
NEVER_IN = {
    "flow": {"click", "PIL", "numpy"},
    "completion": {"click", "PIL", "numpy"},
    "data": {"numpy"},
    "render": {"numpy"},
    "training": {"numpy"},
    "analysis": {"numpy"},
}
# the classical baselines are an optional extra for evaluation only, imported lazily
NUMPY_ALLOWED = {("analysis", "baselines")}


def rank(unit):
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"missingglow.{unit} is in no layer: add it to LAYERS")


def modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)
                yield parts, path


def imports(parts, path):
    """(unit inside missingglow or None, top-level module name) for each import in the file."""
    package = ["missingglow", *parts[:-1]]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                yield (names[1] if names[0] == "missingglow" and len(names) > 1 else None), names[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = node.module.split(".")
            if target[0] != "missingglow":
                yield None, target[0]
            elif len(target) > 1:
                yield target[1], "missingglow"
            else:  # from missingglow import X / from . import X
                for alias in node.names:
                    yield alias.name, "missingglow"


ALL = sorted(modules())


@pytest.mark.parametrize("parts,path", ALL, ids=["/".join(p) for p, _ in ALL])
def test_imports_point_down(parts, path):
    unit = parts[0]
    if unit == "__init__":  # the package's front: re-exports from any layer
        return
    for target, top in imports(parts, path):
        if target is not None and target != unit:
            assert rank(target) <= rank(unit), f"{'/'.join(parts)} imports the higher {target}"
        if top in ONLY_IN:
            assert unit in ONLY_IN[top], f"{'/'.join(parts)} imports {top}"
        if top == "numpy" and tuple(parts) in NUMPY_ALLOWED:
            continue
        assert top not in NEVER_IN.get(unit, ()), f"{'/'.join(parts)} imports {top}"


def test_a_climbing_import_is_caught(tmp_path):
    """The checker itself: a flow module that imports the CLI, or click, fails it."""
    bad = tmp_path / "model.py"
    bad.write_text("def f():\n    from ..cli import main\n    import click\n")
    found = list(imports(["flow", "model"], str(bad)))
    assert ("cli", "missingglow") in found and (None, "click") in found
    assert rank("cli") > rank("flow")
