"""The packages meet only through each other's public API, and no module of tether imports itself.

A package is ``tether.<name>`` (schemas, bus, pricing, middleware, projections, adapters, memory,
testing, cli: docs/architecture.md's layer table). A module may import anything of its own
package, but of another package only what that package's ``__init__`` exports: no private module
(``tether.bus._outbox``) and no private name (``_x``). The top-level private modules
(``tether._configfile``, ``tether._loop``...) are tether's shared internals, outside every
package: any module may import them, but not their private names. Tests may import privates.

The import graph of tether's modules has no cycle. Every import statement counts, those inside
functions and under ``TYPE_CHECKING`` too; an import of ``pkg.sub`` is an edge to that module only
(not to its parent packages, which Python imports first in any case: counting them would make
a cycle of every lazy import in ``tether/__init__.py``'s ``__getattr__``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests._ast import parse

ROOT = Path(__file__).resolve().parent.parent
TETHER = ROOT / "tether"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(module: str) -> str | None:
    """``tether.<name>`` for a module of a package (``tether.pricing`` is one), else None: the
    top-level private modules and ``tether`` itself belong to no package."""
    parts = module.split(".")
    if len(parts) < 2 or _private(parts[1]) or parts[1] == "__main__":
        return None
    return ".".join(parts[:2])


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute, relative imports resolved
    names: tuple[str, ...]  # () for ``import module``


def _imports(source: str, module: str, *, is_package: bool) -> Iterator[Import]:
    """Every import statement in ``source`` (module ``module``), wherever it is."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name, ())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield Import(node.lineno, target, tuple(alias.name for alias in node.names))


def _exports(package: str, root: Path) -> set[str]:
    """The names in ``package``'s ``__all__`` (read from its source: nothing is imported)."""
    path = root.joinpath(*package.split("."))
    source = (path / "__init__.py") if path.is_dir() else path.with_suffix(".py")
    for node in parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return {elt.value for elt in ast.walk(node.value) if isinstance(elt, ast.Constant)
                    and isinstance(elt.value, str)}
    return set()


def _use_instead(package: str, name: str, root: Path) -> str:
    if name in _exports(package, root):
        return f"use `from {package} import {name}`"
    return (f"export it from {package} (its __init__ and __all__, with a line of its docstring), then "
            f"`from {package} import {name}`")


def private_imports(root: Path) -> list[str]:
    """Each import, in the modules under ``root/tether``, of a private module or name of another package."""
    found = []
    for path in sorted((root / "tether").rglob("*.py")):
        module = _module_name(path, root)
        own = _package_of(module)
        where = path.relative_to(root)
        for imp in _imports(path.read_text(), module, is_package=path.name == "__init__.py"):
            parts = imp.module.split(".")
            if parts[0] != "tether":
                continue
            # from tether import x: x is a package or a top-level module
            targets = [(f"tether.{name}", ()) for name in imp.names] if len(parts) == 1 else [(imp.module, imp.names)]
            for target, names in targets:
                package = _package_of(target)
                if package is None:  # a top-level module: shared internals, but not its private names
                    for name in names:
                        if _private(name):
                            found.append(f"{where}:{imp.line}: imports the private name {name} of {target}: "
                                         f"make it public there (no leading underscore)")
                    continue
                if package == own:
                    continue
                inner = target.split(".")[2:]
                if any(_private(part) for part in inner):
                    if not names:
                        found.append(f"{where}:{imp.line}: imports the private module {target} of another package: "
                                     f"import what it needs from {package} (exported by its __init__ and __all__)")
                    for name in names:
                        found.append(f"{where}:{imp.line}: imports {name} from the private module {target} "
                                     f"of another package: {_use_instead(package, name, root)}")
                    continue
                for name in names:
                    if _private(name):
                        found.append(f"{where}:{imp.line}: imports the private name {name} of {package}: "
                                     f"{_use_instead(package, name.lstrip('_'), root)} (a public name)")
    return found


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """Each module under ``root/tether`` -> the tether modules it imports (-> the line)."""
    paths = {_module_name(p, root): p for p in sorted((root / "tether").rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for module, path in paths.items():
        edges: dict[str, int] = {}
        for imp in _imports(path.read_text(), module, is_package=path.name == "__init__.py"):
            submodules = [f"{imp.module}.{name}" for name in imp.names if f"{imp.module}.{name}" in paths]
            for sub in submodules:
                edges.setdefault(sub, imp.line)
            # ``from pkg import a`` runs pkg's __init__ unless every name is a submodule of it
            if imp.module in paths and len(submodules) < max(1, len(imp.names)):
                edges.setdefault(imp.module, imp.line)
        edges.pop(module, None)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(component)
    lines = [f"  {module} imports {target} (line {line})" for module in component
             for target, line in sorted(graph[module].items()) if target in members]
    return "an import cycle: move what the modules need of each other into a module of its own\n" + "\n".join(lines)


# -- the checks on tether itself ---------------------------------------------------------------------


def test_no_module_imports_a_private_module_or_name_of_another_package() -> None:
    found = private_imports(ROOT)
    assert found == [], "private imports across packages:\n" + "\n".join(found)


def test_no_import_cycle_among_tethers_modules() -> None:
    graph = import_graph(ROOT)
    assert "tether.bus" in graph["tether.cli._status"]  # the graph is read at all
    found = cycles(graph)
    assert found == [], "\n".join(_describe(component, graph) for component in found)


# -- the checks catch what they are for ------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, source in {"tether/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path


def test_private_imports_are_found_with_what_to_use_instead(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "tether/_shared.py": "def helper(): ...\ndef _inner(): ...\n",
        "tether/bus/__init__.py": 'from ._outbox import depth\n__all__ = ["depth"]\n',
        "tether/bus/_outbox.py": "def depth(): ...\ndef aside(): ...\n",
        "tether/cli/__init__.py": "",
        "tether/cli/_status.py": (
            "from tether.bus._outbox import depth\n"          # 1: private module, exported name
            "from ..bus._outbox import aside\n"               # 2: relative, not exported
            "import tether.bus._outbox\n"                     # 3: plain import
            "from tether.bus import _depth\n"                 # 4: private name
            "from tether._shared import helper, _inner\n"     # 5: top-level module: only its private name
            "from tether.bus import depth\n"                  # 6: fine
            "from ._format import style\n"                    # 7: own package: fine
            "def late():\n    from tether.bus._outbox import depth\n"  # 9: inside a function
        ),
        "tether/cli/_format.py": "style = 1\n",
        "tether/bus/_feed.py": "from ._outbox import aside\nfrom tether.bus._outbox import depth\n",  # own package
    })
    found = private_imports(root)
    where = "tether/cli/_status.py"
    assert found == [
        f"{where}:1: imports depth from the private module tether.bus._outbox of another package: "
        "use `from tether.bus import depth`",
        f"{where}:2: imports aside from the private module tether.bus._outbox of another package: export it "
        "from tether.bus (its __init__ and __all__, with a line of its docstring), then `from tether.bus import aside`",
        f"{where}:3: imports the private module tether.bus._outbox of another package: import what it needs "
        "from tether.bus (exported by its __init__ and __all__)",
        f"{where}:4: imports the private name _depth of tether.bus: use `from tether.bus import depth` "
        "(a public name)",
        f"{where}:5: imports the private name _inner of tether._shared: make it public there (no leading underscore)",
        f"{where}:9: imports depth from the private module tether.bus._outbox of another package: "
        "use `from tether.bus import depth`",
    ]


def test_import_cycles_are_found_lazy_imports_too(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "tether/views/__init__.py": "from ._runner import run\n",
        "tether/views/_runner.py": "def run():\n    from ._pool import pool\n",  # lazy, still an edge
        "tether/views/_pool.py": "from ._runner import run\n",
        "tether/views/_child.py": "from . import _pool\n",  # the submodule, not the package
    })
    graph = import_graph(root)
    assert graph["tether.views._child"] == {"tether.views._pool": 1}
    assert cycles(graph) == [["tether.views._pool", "tether.views._runner"]]
    assert _describe(["tether.views._pool", "tether.views._runner"], graph).endswith(
        "  tether.views._pool imports tether.views._runner (line 1)\n"
        "  tether.views._runner imports tether.views._pool (line 2)")
