"""The package's layers (docs/architecture.md): a module imports only its own layer or lower
ones, so data never depends on models, models never on methods, and the library never on the
command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "visalign"

# low to high; a module belongs to the layer of the longest prefix that names it
LAYERS: list[tuple[str, ...]] = [
    ("visalign", "visalign.io", "visalign.config"),
    ("visalign.data", "visalign.world"),
    ("visalign.models",),
    ("visalign.losses", "visalign.verifier"),
    ("visalign.training",),
    ("visalign.eval", "visalign.analysis", "visalign.report"),
    ("visalign.methods",),
    ("visalign.compare",),
    ("visalign.commands", "visalign.cli"),
]


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    if rank is None:
        raise KeyError(module)
    return rank


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def visalign_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``visalign`` import in the file, function-level ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("visalign")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("visalign"):
            # `from visalign import x` may name a submodule: take it as visalign.x
            if node.module == "visalign":
                out += [(node.lineno, f"visalign.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        own = module_name(path)
        for line, mod in visalign_imports(path):
            try:
                target = layer_of(mod)
            except KeyError:
                target = 0 if mod == "visalign.__version__" else None
            if target is None:
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: imports {mod}, which is in "
                           "no layer")
            elif target > layer_of(own):
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: {own} (layer "
                           f"{layer_of(own)}) imports {mod} (layer {target})")
    return bad


def test_every_module_has_a_layer():
    for path in SRC.rglob("*.py"):
        layer_of(module_name(path))


def test_no_module_imports_a_higher_layer():
    assert violations() == []


@pytest.mark.parametrize("src,imported,ok", [
    ("visalign.data.coco", "visalign.io", True),
    ("visalign.data.packing", "visalign.models.adapter", False),
    ("visalign.methods.sft", "visalign.eval.chair", True),
    ("visalign.eval.suite", "visalign.methods.sft", False),
    ("visalign.compare.grid", "visalign.commands.train", False),
])
def test_the_rule_itself(src, imported, ok):
    assert (layer_of(imported) <= layer_of(src)) is ok
