"""The package's import direction, read from the source with ``ast`` (no code runs).

Each folder of convlens/ (``arch``, ``units``, ``plots`` ...) and each top-level module (``taps``,
``errors`` ...) is one node; every ``import`` and ``from ... import`` (at module level and inside
functions) is an edge. ``from convlens import name`` goes to the module the flat API's table names
for it (``convlens/__init__.py``'s ``_API``/``_MODULES``: that is the module the import runs), and
to the package's own ``__init__`` (node ``convlens``) for the names it defines itself.

Rules:
1. No cycle between nodes.
2. ``plots`` draws results and imports no computation: only ``plots`` and ``errors``.
3. The library (every node but ``plots``, ``reporting`` and ``cli``) imports ``plots`` only to hand a
   result to a figure, inside a method named ``plot``, ``plot_<what>`` or ``_repr_png_``
   (``fig = result.plot()`` only delegates); these edges are left out of rule 1.
4. Nothing outside ``cli`` imports ``cli``.
5. Only ``cli`` imports ``reporting``; the report is a layer over the library and ``plots``.
6. Only ``cli`` imports ``web``; the explorer is a layer over the library, ``plots`` and the results store.
Imports by name at run time (``importlib.import_module("...")``) are not seen.
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "convlens"
FIGURES, REPORT, CLI, WEB = "plots", "reporting", "cli", "web"
PLOTS_MAY_IMPORT = {"plots", "errors"}
DELEGATE = re.compile(r"plot|plot_\w+|_repr_png_")  # result-object methods that hand the result to plots


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    where: str       # "units/filters.py:389"
    delegate: bool   # inside a result object's plot/plot_*/_repr_png_ method, into plots

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.where})"


def _flat_api(root: Path) -> dict[str, str]:
    """{public name: defining module} from the package __init__'s ``_API`` and ``_MODULES`` tables."""
    table = {}
    for node in ast.parse((root / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("_API", "_MODULES") for t in node.targets):
            table.update(ast.literal_eval(node.value))
    return table


def _node(root: Path, dotted: list[str], api: dict[str, str]) -> str | None:
    """The node a dotted module path (``[package, folder, module, ...]``, maybe ending in an imported
    name) lands in; None outside the package."""
    if dotted[0] != root.name:
        return None
    if len(dotted) == 1:
        return root.name
    head = dotted[1]
    if (root / head).is_dir() or (root / f"{head}.py").is_file():
        return head
    if head in api:  # a name the flat API imports from its module
        return _node(root, api[head].split("."), {})
    return root.name


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _in_delegate(node: ast.AST, parents: dict) -> bool:
    """Is ``node`` inside a method (a function defined in a class body) named plot/plot_*/_repr_png_?"""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return DELEGATE.fullmatch(node.name) is not None and isinstance(parents.get(node), ast.ClassDef)
    return False


def import_edges(root: Path) -> list[Edge]:
    """Every import from one node of the package at ``root`` into another."""
    api = _flat_api(root) if (root / "__init__.py").is_file() else {}
    edges = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        module = [root.name, *rel.with_suffix("").parts]
        package = module[:-1]                                   # __init__.py: the package itself
        src = module[1] if len(rel.parts) > 1 or rel.stem != "__init__" else root.name
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                origin = base + (node.module.split(".") if node.module else [])
                targets = [origin + [a.name] for a in node.names]
            else:
                continue
            for dst in {_node(root, t, api) for t in targets} - {None, src}:
                edges.append(Edge(src, dst, f"{rel.as_posix()}:{node.lineno}",
                                  dst == FIGURES and _in_delegate(node, parents)))
    return edges


def graph_text(edges: list[Edge]) -> str:
    """One line per node: ``units -> arch, errors, ...`` (``plots*``: only from plot methods)."""
    out = defaultdict(set)
    for e in edges:
        out[e.src].add(e.dst + ("*" if e.delegate else ""))
    out = {src: {d for d in dsts if not (d.endswith("*") and d[:-1] in dsts)} for src, dsts in out.items()}
    return "\n".join(f"  {src} -> {', '.join(sorted(dsts))}" for src, dsts in sorted(out.items()))


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), delegating edges left out."""
    succ = defaultdict(set)
    for e in edges:
        if not e.delegate:
            succ[e.src].add(e.dst)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(succ) | {w for ws in succ.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def shortest_cycle(component: list[str], edges: list[Edge]) -> list[Edge]:
    """The edges of a shortest cycle through the component's first node (breadth first), one import each."""
    first: dict[tuple[str, str], Edge] = {}
    for e in edges:
        if not e.delegate and e.src in component and e.dst in component:
            first.setdefault((e.src, e.dst), e)
    start = component[0]
    paths, queue = {start: []}, deque([start])
    while queue:
        v = queue.popleft()
        for (a, b), e in first.items():
            if a == v and b == start:
                return paths[v] + [e]
            if a == v and b not in paths:
                paths[b] = paths[v] + [e]
                queue.append(b)
    return []


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each, naming the file and line of the import."""
    edges = import_edges(root)
    out = [f"cycle between {', '.join(c)}: " + "; ".join(map(str, shortest_cycle(c, edges))) for c in cycles(edges)]
    for e in edges:
        if e.src == FIGURES and e.dst not in PLOTS_MAY_IMPORT:
            out.append(f"plots imports computation: {e}")
        if e.dst == FIGURES and e.src not in (REPORT, CLI, WEB) and not e.delegate:
            out.append(f"the library imports plots outside a plot/plot_*/_repr_png_ method: {e}")
        if e.dst == CLI:
            out.append(f"only cli imports cli: {e}")
        if e.dst == REPORT and e.src != CLI:
            out.append(f"only cli imports reporting: {e}")
        if e.dst == WEB and e.src != CLI:
            out.append(f"only cli imports web: {e}")
    return out


def test_convlens_imports_in_one_direction():
    broken = violations(PACKAGE)
    assert not broken, "\n".join(broken) + "\n\nfolder graph (* only from plot methods):\n" + graph_text(
        import_edges(PACKAGE))


def test_the_graph_sees_lazy_imports_and_delegating_plot_methods():
    edges = import_edges(PACKAGE)
    pairs = {(e.src, e.dst) for e in edges}
    assert ("insight", "training") in pairs            # lazy imports inside functions count
    assert ("cli", "reporting") in pairs and ("reporting", "plots") in pairs and ("cli", "web") in pairs
    to_plots = [e for e in edges if e.src == "codespace" and e.dst == "plots"]
    assert to_plots and all(e.delegate for e in to_plots)  # TSNEResult.plot ... hand their results to plots


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checker_finds_planted_violations(tmp_path):
    pkg = _write(tmp_path / "pkg", {
        "__init__.py": '_API = {"fit": "pkg.training.fit"}\n',
        "errors.py": "",
        "training/__init__.py": "",
        "training/fit.py": "from ..units import grid\nfrom ..reporting import page\n",  # training -> units, reporting
        "units/__init__.py": "",
        "units/grid.py": ("from .. import fit\n"                          # via the flat API: units -> training
                          "from ..plots.draw import figure\n"              # computation -> plots
                          "class Result:\n"
                          "    def plot(self):\n"
                          "        from ..plots import draw\n"             # allowed: delegation
                          "def plot():\n"
                          "    from ..plots import draw\n"                 # not a method: not allowed
                          "def helper():\n"
                          "    import pkg.cli.app\n"),                     # library -> cli
        "plots/__init__.py": "",
        "plots/draw.py": "from ..errors import expect\nfrom ..units.grid import Result\n",  # plots -> units
        "reporting/__init__.py": "from ..cli import app\n",                # reporting -> cli
        "cli/__init__.py": "",
        "cli/app.py": "from ..reporting import page\nfrom ..units import grid\n",
    })
    found = violations(pkg)
    assert [v for v in found if v.startswith("cycle")] == [  # one component, and its shortest cycle
        "cycle between cli, plots, reporting, training, units: cli -> reporting (cli/app.py:1); "
        "reporting -> cli (reporting/__init__.py:1)"]
    assert [v for v in found if v.startswith("plots imports")] == [
        "plots imports computation: plots -> units (plots/draw.py:2)"]
    assert sorted(v for v in found if v.startswith("the library imports plots")) == [
        "the library imports plots outside a plot/plot_*/_repr_png_ method: units -> plots (units/grid.py:2)",
        "the library imports plots outside a plot/plot_*/_repr_png_ method: units -> plots (units/grid.py:7)"]
    assert sorted(v for v in found if v.startswith("only cli imports cli")) == [
        "only cli imports cli: reporting -> cli (reporting/__init__.py:1)",
        "only cli imports cli: units -> cli (units/grid.py:9)"]
    assert [v for v in found if v.startswith("only cli imports reporting")] == [
        "only cli imports reporting: training -> reporting (training/fit.py:2)"]
    assert not any("units/grid.py:5" in v for v in found)                  # the delegating method is allowed


def test_the_checker_passes_a_tree_that_keeps_the_rules(tmp_path):
    pkg = _write(tmp_path / "pkg", {
        "__init__.py": "from .errors import Error\n__version__ = '0'\n",
        "errors.py": "",
        "units/grid.py": ("from .. import __version__\nfrom ..errors import Error\n"
                          "class Result:\n    def _repr_png_(self):\n        from ..plots.draw import png\n"),
        "plots/draw.py": "from ..errors import Error\nfrom .common import pyplot\n",
        "reporting/page.py": "from ..units.grid import Result\nfrom ..plots import draw\n",
        "cli/app.py": "from ..reporting import page\n",
    })
    assert violations(pkg) == []
    assert graph_text(import_edges(pkg)) == ("  cli -> reporting\n  pkg -> errors\n  plots -> errors\n"
                                             "  reporting -> plots, units\n  units -> errors, pkg, plots*")


def test_no_flat_api_name_is_hidden_by_a_subpackage_of_the_same_name():
    """``convlens.report`` is a function: a subpackage or module ``convlens/report`` would hide it, since
    importing ``convlens.report.<anything>`` sets the package attribute ``report`` to the subpackage."""
    api = _flat_api(PACKAGE)
    hidden = [f"{name} ({module})" for name, module in api.items()
              if ((PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()) and module != f"convlens.{name}"]
    assert not hidden, "flat-API names that are also a subpackage or module of convlens: " + ", ".join(hidden)
