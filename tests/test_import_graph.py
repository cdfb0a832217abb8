"""The package's import graph runs one way: data → models → training → uncertainty → evaluation →
explain → report → api → cli, with shared helpers at the bottom and `dualfuse/__init__` as the facade.

Every `import` / `from ... import` under src/dualfuse (relative ones and those inside functions
included) is an edge to the dualfuse module it names. A test fails on an import of a higher layer, a
module no layer is assigned to (so a new module is placed deliberately), and any circle.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
PACKAGE = "dualfuse"

# Exact modules first, then packages (a package and everything under it).
MODULE_LAYERS = {
    "dualfuse.atomic": 0,
    "dualfuse.validation": 0,
    "dualfuse.version": 0,
    "dualfuse.device": 0,
    "dualfuse.config": 0,
    "dualfuse.cli": 10,
    "dualfuse.__main__": 10,
    "dualfuse": 11,  # the public facade: may import anything, nothing inside may import it
}
PACKAGE_LAYERS = {
    "dualfuse.data": 1,
    "dualfuse.models": 2,
    "dualfuse.training": 3,
    "dualfuse.uncertainty": 4,
    "dualfuse.evaluation": 5,
    "dualfuse.explain": 6,
    "dualfuse.report": 7,
    "dualfuse.api": 8,
    "dualfuse.deploy": 9,
}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    file: str  # relative to the repository root
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.importer} -> {self.imported}"


def discover_modules() -> dict[str, Path]:
    """Every module and package under src/dualfuse, by dotted name."""
    modules = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> int | None:
    if module in MODULE_LAYERS:
        return MODULE_LAYERS[module]
    for package, layer in PACKAGE_LAYERS.items():
        if module == package or module.startswith(package + "."):
            return layer
    return None


def _existing_prefix(name: str, modules: dict[str, Path]) -> str | None:
    """`name` if it is a module or package, else its longest prefix that is one."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _is_internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def import_edges(modules: dict[str, Path]) -> tuple[list[Edge], list[str]]:
    """(edges between dualfuse modules, imports naming no dualfuse module at all)."""
    edges, broken = [], []
    for module, path in modules.items():
        file = path.relative_to(REPO_ROOT).as_posix()
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if _is_internal(alias.name)]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{node.module}" if node.module else package
                else:
                    base = node.module or ""
                if not _is_internal(base):
                    continue
                # `from a.b import c` names module a.b.c when there is one, else something in a.b.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                resolved = _existing_prefix(target, modules)
                if resolved is None:
                    broken.append(f"{file}:{node.lineno} {module} -> {target} (no such module)")
                elif resolved != module:  # `from . import name` in a package's __init__ names itself
                    edges.append(Edge(module, resolved, file, node.lineno))
    return sorted(set(edges), key=lambda e: (e.file, e.line, e.imported)), broken


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge], list[str]]:
    modules = discover_modules()
    edges, broken = import_edges(modules)
    return modules, edges, broken


def strongly_connected_components(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep packages)."""
    successors: dict[str, list[str]] = {n: [] for n in nodes}
    for edge in edges:
        successors.setdefault(edge.importer, []).append(edge.imported)
        successors.setdefault(edge.imported, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for root in successors:
        if root in index:
            continue
        work = [(root, iter(successors[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycle_within(component: list[str], edges: list[Edge]) -> list[Edge]:
    """One concrete circle through the component's first module (breadth-first, so a shortest one)."""
    members = set(component)
    inside = [e for e in edges if e.importer in members and e.imported in members]
    start = component[0]
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in inside:
                if edge.importer != node:
                    continue
                if edge.imported == start:
                    path = [edge]
                    while path[0].importer != start:
                        path.insert(0, came_by[path[0].importer])
                    return path
                if edge.imported not in came_by:
                    came_by[edge.imported] = edge
                    following.append(edge.imported)
        frontier = following
    raise AssertionError(f"no cycle found in component {component}")  # cannot happen for an SCC


# ----------------------------------------------------------------------------------------------------
# The graph itself


def test_the_walker_sees_the_package(graph):
    modules, edges, _ = graph
    assert {"dualfuse", "dualfuse.models.registry", "dualfuse.api"} <= set(modules)
    # Plain, from-, and facade imports all become edges (a sanity check on the parser, not on src/).
    assert any(e.importer == "dualfuse" for e in edges)
    assert any(e.importer.startswith("dualfuse.models.") and e.imported == "dualfuse.models.registry" for e in edges)


def test_every_import_names_an_existing_module(graph):
    _, _, broken = graph
    assert not broken, "imports of dualfuse modules that do not exist:\n" + "\n".join(broken)


def test_every_module_has_a_layer(graph):
    modules, _, _ = graph
    unknown = sorted(f"{path.relative_to(REPO_ROOT).as_posix()} ({name})"
                     for name, path in modules.items() if layer_of(name) is None)
    assert not unknown, ("modules with no layer in tests/test_import_graph.py (place each one deliberately):\n"
                         + "\n".join(unknown))


def test_no_upward_imports(graph):
    _, edges, _ = graph
    upward = [f"{edge}  (layer {layer_of(edge.importer)} imports layer {layer_of(edge.imported)})"
              for edge in edges
              if layer_of(edge.importer) is not None and layer_of(edge.imported) is not None
              and layer_of(edge.imported) > layer_of(edge.importer)]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_nothing_inside_imports_the_facade(graph):
    _, edges, _ = graph
    offending = [str(edge) for edge in edges if edge.imported == PACKAGE]
    assert not offending, ("modules importing the `dualfuse` facade (import dualfuse.version etc. directly):\n"
                           + "\n".join(offending))


def test_no_import_cycles(graph):
    modules, edges, _ = graph
    cycles = [component for component in strongly_connected_components(sorted(modules), edges) if len(component) > 1]
    report = []
    for component in cycles:
        report.append(f"cycle between {', '.join(component)}:")
        report.extend(f"    {edge}" for edge in cycle_within(component, edges))
    assert not cycles, "import cycles:\n" + "\n".join(report)


# ----------------------------------------------------------------------------------------------------
# The checker catches what it claims to (on a synthetic package, so src/ is not needed for this)


def test_checker_finds_upward_imports_and_cycles(tmp_path, monkeypatch):
    root = tmp_path / "src" / PACKAGE
    files = {
        "__init__.py": "from dualfuse.api import run\n",
        "version.py": "",
        "models/__init__.py": "from dualfuse.models.registry import create\n",
        "models/registry.py": "def create():\n    from dualfuse.models import dcat\n",
        "models/dcat.py": "from .registry import create\nfrom ..training import fit\n",
        "training/__init__.py": "",
        "training/fit.py": "import dualfuse.version\nimport dualfuse\n",
        "api/__init__.py": "from . import run\n",
        "api/run.py": "",
        "extra.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "src")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    modules = discover_modules()
    edges, broken = import_edges(modules)
    assert not broken
    as_text = {str(e) for e in edges}
    assert "src/dualfuse/models/registry.py:2 dualfuse.models.registry -> dualfuse.models.dcat" in as_text
    assert "src/dualfuse/models/dcat.py:1 dualfuse.models.dcat -> dualfuse.models.registry" in as_text
    assert "src/dualfuse/models/dcat.py:2 dualfuse.models.dcat -> dualfuse.training.fit" in as_text
    assert "src/dualfuse/training/fit.py:2 dualfuse.training.fit -> dualfuse" in as_text
    assert "src/dualfuse/api/__init__.py:1 dualfuse.api -> dualfuse.api.run" in as_text
    assert [m for m in modules if layer_of(m) is None] == ["dualfuse.extra"]
    components = [c for c in strongly_connected_components(sorted(modules), edges) if len(c) > 1]
    assert components == [["dualfuse.models.dcat", "dualfuse.models.registry"]]
    assert [str(e) for e in cycle_within(components[0], edges)] == [
        "src/dualfuse/models/dcat.py:1 dualfuse.models.dcat -> dualfuse.models.registry",
        "src/dualfuse/models/registry.py:2 dualfuse.models.registry -> dualfuse.models.dcat",
    ]


# ----------------------------------------------------------------------------------------------------
# Loading a saved model never imports Lightning


def test_load_model_does_not_import_lightning(tmp_path):
    from dualfuse.models import ModelSpec, Preprocessing, create_model
    from dualfuse.models.saved import save_model

    kwargs = {"backbone": "resnet18", "num_classes": 2, "in_chans": 1}
    model = create_model("timm_classifier", **kwargs).eval()
    spec = ModelSpec(name="timm_classifier", kwargs=kwargs, tasks={"label": ["negative", "positive"]},
                     modalities=["image"],
                     preprocessing=Preprocessing(img_size=32, resize="resize", normalize="zscore",
                                                 in_chans={"image": 1}))
    folder = save_model(tmp_path / "model", model, spec)
    script = textwrap.dedent(f"""
        import sys
        import torch
        import dualfuse
        from dualfuse.models import ModelSpec
        loaded = dualfuse.load_model({str(folder)!r})
        assert loaded.spec == ModelSpec.from_json({str(folder / "model.json")!r}), loaded.spec
        probs = loaded.predict_proba(torch.zeros(2, 1, 32, 32))
        assert set(probs) == {{"label"}} and probs["label"].shape == (2, 2), probs
        heavy = sorted(name for name in sys.modules
                       if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"))
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
