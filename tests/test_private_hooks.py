"""Other libraries' private API is used only in the modules that list it (``_*priv.py``, see docs/architecture.md).

Two checks over tether's code: no ``obj._name`` (nor ``getattr(obj, "_name")``) outside those
modules unless tether itself defines ``_name`` somewhere; and no class outside them overrides a
private method or attribute of another library's base class.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import tether
from tests._ast import parse
from tether.adapters._autoinit import FRAMEWORKS

ROOT = Path(__file__).resolve().parent.parent
TETHER = ROOT / "tether"
SOURCES = sorted(TETHER.rglob("*.py"))


def _is_hooks_module(path: Path) -> bool:
    return path.name.endswith("priv.py")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_by_tether() -> set[str]:
    """Every private name tether gives a value of its own: attributes (of ``self``), methods, class
    fields, functions. (A name tether also uses for something of its own, such as ``_prefix``, is not
    caught on another library's object: the check is a net, not a proof.)"""
    names: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {name for name in names if _private(name)}


def _reaches(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every private name read off an object other than self, cls or super()."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            found.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            found.append((node.lineno, node.args[1].value))
    return found


def test_no_private_name_of_another_library_outside_the_hooks_modules() -> None:
    ours = _defined_by_tether()
    offenders = sorted({f"{path.relative_to(ROOT)}:{line}: .{name}"
                        for path in SOURCES if not _is_hooks_module(path)
                        for line, name in _reaches(parse(path.read_text())) if name not in ours})
    assert offenders == [], ("private API of another library used outside a _*priv.py module (move it into the "
                             "library's hooks module, with a contract test):\n" + "\n".join(offenders))


def test_the_scan_sees_a_private_name_of_another_library() -> None:
    ours = _defined_by_tether()
    reached = _reaches(parse("def f(nc, loop):\n    nc._ps.reset()\n    return getattr(loop, '_ready')\n"))
    assert sorted(name for _line, name in reached if name not in ours) == ["_ps", "_ready"]


def _own_private_members(path: Path) -> dict[str, set[str]]:
    """For each top-level class of a module: the private names its body defines."""
    members = {}
    for node in parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            names = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(item.name)
                elif isinstance(item, ast.Assign):
                    names |= {t.id for t in item.targets if isinstance(t, ast.Name)}
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
            members[node.name] = {name for name in names if _private(name)}
    return members


_ADAPTERS = {adapter for _, adapter in FRAMEWORKS.values() if adapter}
_FRAMEWORK_PACKAGES = {"langgraph", "langchain_core", "agents"}
_FRAMEWORK_PACKAGES |= {"autogen_core", "autogen_agentchat", "autogen_ext", "google"}
_FRAMEWORK_PACKAGES |= {"crewai", "litellm", "pydantic_ai"}
_FRAMEWORK_PACKAGES |= {"llama_index"}


def test_no_override_of_another_librarys_private_member_outside_the_hooks_modules() -> None:
    offenders = []
    for info in pkgutil.walk_packages(tether.__path__, "tether."):
        if info.name.endswith("__main__"):  # runs the CLI
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # a framework's adapter, its framework in a venv of its own
            if (info.name in _ADAPTERS or (info.name.count(".") == 2 and info.name.startswith("tether.adapters."))) \
                    and exc.name and exc.name.split(".")[0] in _FRAMEWORK_PACKAGES:
                continue
            raise
        path = Path(inspect.getfile(module))
        if _is_hooks_module(path):
            continue
        for name, privates in _own_private_members(path).items():
            cls = getattr(module, name)
            foreign = [base for base in cls.__mro__[1:] if not base.__module__.startswith(("tether.", "builtins"))]
            offenders += [f"{module.__name__}.{name}.{member}" for member in sorted(privates)
                          if any(member in vars(base) for base in foreign)]
    assert offenders == [], ("another library's private member overridden outside a _*priv.py module:\n"
                             + "\n".join(offenders))
