"""Import layering: each project module may import only the layers its own layer allows.

Every .py file of the scanned packages is parsed with `ast` (nothing is imported), every
`import x` / `from x import y` is collected (nested ones and relative ones included) and each
import of a project module is checked against LAYERS below. A new module that matches no
pattern fails the test until it is placed in a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED_PACKAGES = ("serving", "kernels", "training", "benchmarks", "modserve")
# Top-level names whose imports are checked; `tests` is never scanned but may not be imported.
PROJECT_ROOTS = frozenset((*SCANNED_PACKAGES, "tests"))

SERVING = ("base", "model", "engine", "protocol", "proto", "gateway", "api", "rpc", "roots")

# layer -> (module patterns, layers it may import). "pkg.*" matches pkg and everything below
# it; a plain "pkg.mod" matches that module only. The most specific (longest) pattern wins.
LAYERS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "base": (
        (
            "serving",
            "serving.config",
            "serving.errors",
            "serving.categories",
            "serving.logs",
            "serving.text_table",
            "serving.tracing",
            "kernels.*",
        ),
        frozenset({"base"}),
    ),
    "model": (("serving.model.*",), frozenset({"model", "base"})),
    "engine": (("serving.engine.*",), frozenset({"engine", "model", "base"})),
    # Wire types: base only, unrelated to model/engine.
    "protocol": (("serving.protocol.*",), frozenset({"protocol", "base"})),
    # Generated gRPC stubs (serving/rpc/protogen.py): self-contained.
    "proto": (("serving._proto.*",), frozenset({"proto"})),
    # Policy (projects, keys, quotas, audit, evaluation): above the engine, below transports.
    "gateway": (("serving.gateway.*",), frozenset({"gateway", "engine", "protocol", "base"})),
    # Transports reach models only through serving.engine, and never each other.
    "api": (("serving.api.*",), frozenset({"api", "gateway", "engine", "protocol", "base"})),
    "rpc": (
        ("serving.rpc.*",),
        frozenset({"rpc", "gateway", "engine", "protocol", "base", "proto"}),
    ),
    # Composition roots: anything in serving (kernels is in base), nothing outside it.
    "roots": (
        ("serving.app", "serving.cli", "serving.deployments"),
        frozenset(SERVING),
    ),
    "training": (("training.*",), frozenset({*SERVING, "training"})),
    "benchmarks": (("benchmarks.*",), frozenset({*SERVING, "training", "benchmarks"})),
    "modserve": (("modserve.*",), frozenset({*SERVING, "training", "benchmarks", "modserve"})),
    # Never importable from the scanned packages.
    "tests": (("tests.*",), frozenset()),
}


def _matches(pattern: str, module: str) -> int:
    """Specificity of `pattern` for `module` (length of the matched prefix), 0 if no match."""
    if pattern.endswith(".*"):
        base = pattern[:-2]
        return len(base) if module == base or module.startswith(base + ".") else 0
    return len(pattern) if module == pattern else 0


def layer_of(module: str) -> str | None:
    """The layer of `module` by most specific matching pattern, or None when unplaced."""
    best, best_len = None, 0
    for layer, (patterns, _) in LAYERS.items():
        for pattern in patterns:
            n = _matches(pattern, module)
            if n > best_len:
                best, best_len = layer, n
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def scan_modules() -> dict[str, Path]:
    """Module name -> file, for every .py file of the scanned packages that exist."""
    modules: dict[str, Path] = {}
    for package in SCANNED_PACKAGES:
        if (ROOT / package).is_dir():
            for path in sorted((ROOT / package).rglob("*.py")):
                modules[_module_name(path)] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, at any depth."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".")
                if not is_package:
                    package.pop()
                package = package[: len(package) - (node.level - 1)]
                target = ".".join([*package, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                # `from pkg import sub` depends on the submodule when there is one.
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node.lineno))
    return found


def collect_violations(modules: dict[str, Path]) -> list[str]:
    known = set(modules)
    violations: set[str] = set()
    for importer, path in modules.items():
        importer_layer = layer_of(importer)
        if importer_layer is None:
            violations.add(f"{importer} matches no layer: place it in LAYERS")
            continue
        allowed = LAYERS[importer_layer][1]
        for imported, _line in imports_of(importer, path, known):
            if imported.split(".")[0] not in PROJECT_ROOTS:
                continue
            imported_layer = layer_of(imported)
            if imported_layer is None:
                violations.add(f"{importer} -> {imported} (imported module matches no layer)")
            elif imported_layer not in allowed:
                violations.add(
                    f"{importer} -> {imported} "
                    f"(layer {importer_layer} may not import layer {imported_layer})"
                )
    return sorted(violations)


def test_imports_respect_layers():
    violations = collect_violations(scan_modules())
    assert not violations, f"{len(violations)} layering violation(s):\n" + "\n".join(violations)


def test_layer_of_classifies_hand_written_names():
    assert layer_of("serving") == "base"
    assert layer_of("serving.config") == "base"
    assert layer_of("kernels.classification_head") == "base"
    assert layer_of("serving.model.load") == "model"
    assert layer_of("serving.engine") == "engine"
    assert layer_of("serving.engine.batcher") == "engine"
    assert layer_of("serving.protocol.openai") == "protocol"
    assert layer_of("serving._proto.modserve.v1.moderation_pb2") == "proto"
    assert layer_of("serving.api.openai") == "api"
    assert layer_of("serving.rpc.server") == "rpc"
    assert layer_of("serving.cli") == "roots"
    assert layer_of("training.train") == "training"
    assert layer_of("benchmarks.peers.common") == "benchmarks"
    assert layer_of("modserve.cli") == "modserve"
    assert layer_of("tests.helpers") == "tests"
    # Unplaced names stay unplaced instead of falling into a catch-all layer.
    assert layer_of("serving.newthing") is None
    assert layer_of("servingx") is None
    assert layer_of("serving.configx") is None
    assert layer_of("numpy") is None


def test_rules_reject_what_they_should():
    allowed = {layer: rule[1] for layer, rule in LAYERS.items()}
    assert "engine" not in allowed["protocol"] and "model" not in allowed["protocol"]
    assert "model" not in allowed["api"] and "model" not in allowed["rpc"]
    assert "rpc" not in allowed["api"] and "api" not in allowed["rpc"]
    assert "training" not in allowed["roots"] and "benchmarks" not in allowed["training"]
    for low in ("base", "model", "engine", "protocol", "proto", "api", "rpc", "roots"):
        assert allowed[low].isdisjoint({"training", "benchmarks", "modserve", "tests"}), low


def test_scan_finds_the_project():
    modules = scan_modules()
    assert len(modules) > 40, sorted(modules)
    assert {"serving", "serving.engine.engine", "kernels", "training"} <= set(modules)
    edges = sum(len(imports_of(m, p, set(modules))) for m, p in modules.items())
    assert edges > 100
