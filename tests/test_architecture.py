"""The layout's rules (docs/architecture.md), checked over the code's own imports.

Data moves forward only: config -> components -> clips -> caches -> step -> LoRA. In imports: models
(the flavour registry config validates against) -> config -> lora -> data -> cache -> validate -> train
-> the applications that use them (estimate, bench, wizard, server) -> the commands. A package may import
its own layer and the ones before it, never one further down the flow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "k5tune"

# in flow order; a module may import its own layer and earlier ones
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"k5tune", "k5tune.errors", "k5tune.atomic", "k5tune.progress", "k5tune.runtime",
                    "k5tune.distributed", "k5tune.hostmem"}),
    ("models", {"k5tune.models"}),  # the flavour registry and Kandinsky 5's code: config validates against it
    ("config", {"k5tune.config"}),
    ("lora", {"k5tune.lora"}),
    ("data", {"k5tune.data"}),
    ("cache", {"k5tune.cache"}),
    ("validate", {"k5tune.validate"}),
    ("train", {"k5tune.train"}),
    ("applications", {"k5tune.workflow", "k5tune.estimate", "k5tune.bench",
                      "k5tune.generate", "k5tune.probe"}),
    ("wizard", {"k5tune.wizard"}),
    ("server", {"k5tune.server"}),
    ("commands", {"k5tune.demo", "k5tune.commands", "k5tune.cli"}),
]


def _layer(module: str) -> int:
    """The layer of a module: the longest owner name that prefixes it."""
    best, found = -1, None
    for index, (_, owners) in enumerate(LAYERS):
        for owner in owners:
            if (module == owner or module.startswith(owner + ".")) and len(owner) > best:
                best, found = len(owner), index
    assert found is not None, f"{module} belongs to no layer of tests/test_architecture.py (and docs/architecture.md)"
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every k5tune module this file imports, at the top or inside a function."""
    module = _module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("k5tune")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("k5tune"):
                found.add(name)
    return found


def test_no_package_imports_one_further_down_the_flow():
    upstream = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for target in _imports(path):
            if _layer(target) > _layer(source):
                upstream.append(f"{source} ({LAYERS[_layer(source)][0]}) imports {target} "
                                f"({LAYERS[_layer(target)][0]})")
    assert not upstream, "\n".join(upstream)


@pytest.mark.slow
def test_the_training_loop_never_loads_the_video_decoder():
    script = ("import sys, k5tune.train.trainer, k5tune.train.step; "
              "print(sorted(m for m in sys.modules if m == 'av' or m.startswith(('av.', 'k5tune.data.frames', "
              "'k5tune.data.probe', 'k5tune.data.scan', 'k5tune.cache.builder', 'k5tune.cache.stage'))))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_size_limits_hold():
    """No module over 400 lines, no function over 60 (DESIGN.md: small modules with one job each)."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > 400:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: "
                                f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "\n".join(too_long)
