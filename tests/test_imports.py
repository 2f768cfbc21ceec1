"""Import hygiene of the ``grouprl`` package (issue 12).

Two rules, checked statically with :mod:`ast` (nothing is imported):

1. **No import cycle.** The graph has one node per module (a package is its ``__init__``) and one
   edge per module-level import of another ``grouprl`` module. Imports under
   ``if TYPE_CHECKING:`` are skipped (they never run). An import of ``grouprl.p.m`` also runs
   the ``__init__`` of every package on the way (``grouprl.p``), so it gives an edge to each of
   those packages, except the packages that hold the importer: their ``__init__`` is already
   running when the importer loads, so Python does not run it again. ``from grouprl.p import X``
   gives an edge to ``grouprl.p`` (``X`` is read from its ``__init__``), and to ``grouprl.p.X``
   when ``X`` is a submodule. A package ``__init__`` importing its own submodules is therefore
   not a cycle, but a submodule that imports a name back from its package's ``__init__`` is.
2. **No import inside a function body**, except of an optional extra: a package listed only in
   ``[project.optional-dependencies]`` of ``pyproject.toml`` (the ``dev`` group, test tooling,
   excluded), which is imported where it is needed so that grouprl works without it.

The checker functions are also run on small synthetic packages, so a checker that finds nothing
on grouprl cannot pass unnoticed.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "src" / "grouprl"
PYPROJECT = ROOT / "pyproject.toml"

# Modules an optional extra brings that grouprl imports by a name other than the extra's own
# (extra distribution → importable modules). Every key must be an optional extra in pyproject.
EXTRA_PROVIDES: dict[str, tuple[str, ...]] = {
    "math-verify": ("sympy", "latex2sympy2_extended"),  # math-verify's parser dependencies
    "tensorboard": ("torch.utils.tensorboard",),  # torch's writer imports tensorboard
}
_TEST_TOOLING_GROUP = "dev"


@dataclass(frozen=True)
class Module:
    """One parsed module: dotted name, path shown in messages, syntax tree, package or not."""

    name: str
    path: str
    tree: ast.Module
    is_package: bool


def parse_package(package_dir: Path, shown_from: Path | None = None) -> dict[str, Module]:
    """Every ``.py`` module under ``package_dir`` (a package named by the directory), by name."""
    base = package_dir.parent
    shown_from = base if shown_from is None else shown_from
    modules: dict[str, Module] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path.relative_to(shown_from).as_posix(),
                               ast.parse(path.read_text(), filename=str(path)), is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(nodes: Iterable[ast.AST], in_function: bool = False
             ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """``(import statement, inside a function body?)``; ``if TYPE_CHECKING:`` bodies skipped."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse, in_function)
        else:
            inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from _imports(ast.iter_child_nodes(node), inside)


def _imported_module(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from ... import``, relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        raise ValueError(f"{module.path}:{node.lineno}: relative import beyond the top package")
    base = ".".join(parts[:len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _edges(module: Module, target: str, names: list[str] | None,
           modules: Collection[str]) -> set[str]:
    """Modules whose code runs (or is read) when ``module`` imports ``target`` (see the docstring).

    ``names`` is None for ``import target`` and the imported names for ``from target import``.
    """
    parts = module.name.split(".")
    running = {".".join(parts[:i]) for i in range(1, len(parts))}  # packages holding the importer
    if module.is_package:
        running.add(module.name)
    out: set[str] = set()
    target_parts = target.split(".")
    for i in range(1, len(target_parts)):
        package = ".".join(target_parts[:i])
        if package in modules and package not in running:
            out.add(package)
    if target in modules:
        if names is None:
            if target not in running:
                out.add(target)
        else:
            submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            attributes = [n for n in names if f"{target}.{n}" not in modules]
            out |= submodules
            if attributes or target not in running:
                out.add(target)
    out.discard(module.name)
    return out


def import_graph(modules: Mapping[str, Module]) -> dict[str, dict[str, str]]:
    """``graph[a][b]``: ``"path:line"`` of the first module-level import in ``a`` running ``b``."""
    graph: dict[str, dict[str, str]] = {name: {} for name in modules}
    for module in modules.values():
        for node, in_function in _imports(module.tree.body):
            if in_function:
                continue
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            else:
                targets = [(_imported_module(module, node), [a.name for a in node.names])]
            for target, names in targets:
                for dep in sorted(_edges(module, target, names, modules)):
                    graph[module.name].setdefault(dep, f"{module.path}:{node.lineno}")
    return graph


def _strongly_connected(graph: Mapping[str, Mapping[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
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


def find_cycles(graph: Mapping[str, Mapping[str, str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component with more than one module.

    Each cycle is a path ``[m0, m1, ..., m0]`` starting at the component's first module by name.
    """
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        members, start = set(component), component[0]
        previous: dict[str, str] = {}
        queue = deque([start])
        while queue:  # BFS back to start inside the component
            node = queue.popleft()
            if start in graph[node]:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                cycles.append([*reversed(path), start])
                break
            for succ in sorted(graph[node]):
                if succ in members and succ not in previous and succ != start:
                    previous[succ] = node
                    queue.append(succ)
    return sorted(cycles)


def describe_cycle(cycle: list[str], graph: Mapping[str, Mapping[str, str]]) -> str:
    """``a (a.py:3) → b (b.py:7) → a``: each module with the line that imports the next."""
    steps = [f"{a} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " → ".join([*steps, cycle[-1]])


def _is_within(name: str, allowed: Collection[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in allowed)


def function_level_imports(modules: Mapping[str, Module], allowed: Collection[str]) -> list[str]:
    """``path:line: statement`` for every import in a function body not of an ``allowed`` module.

    ``allowed`` holds dotted module prefixes (``"wandb"``, ``"torch.utils.tensorboard"``); a
    relative import is never allowed (it is always a grouprl module).
    """
    found = []
    for module in modules.values():
        for node, in_function in _imports(module.tree.body):
            if not in_function:
                continue
            if isinstance(node, ast.Import):
                ok = all(_is_within(alias.name, allowed) for alias in node.names)
            else:
                ok = not node.level and _is_within(node.module or "", allowed)
            if not ok:
                found.append(f"{module.path}:{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def _distribution(requirement: str) -> str:
    """The PEP 503 normalised distribution name: ``Math_Verify[x]>=1`` → ``math-verify``."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if name is None:
        raise ValueError(f"pyproject: cannot read a distribution name from {requirement!r}")
    return re.sub(r"[-_.]+", "-", name.group(1)).lower()


def optional_extra_modules(pyproject: Path,
                           provides: Mapping[str, Collection[str]] = EXTRA_PROVIDES
                           ) -> frozenset[str]:
    """Module prefixes that only optional extras provide (the ``dev`` group excluded).

    A distribution ``a-b`` is imported as ``a_b`` (true of every extra grouprl has); modules an
    extra brings under other names come from ``provides`` (:data:`EXTRA_PROVIDES`). A
    distribution that is also a core dependency is not optional.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    core = {_distribution(r) for r in project["dependencies"]}
    extras = {_distribution(r) for group, reqs in project["optional-dependencies"].items()
              if group != _TEST_TOOLING_GROUP for r in reqs} - core
    unknown = set(provides) - extras
    if unknown:
        raise ValueError(f"EXTRA_PROVIDES: {sorted(unknown)} are not optional extras in "
                         f"{pyproject.name}; the extras are {sorted(extras)}")
    names = {dist.replace("-", "_") for dist in extras}
    for dist in extras:
        names.update(provides.get(dist, ()))
    return frozenset(names)


# ---------------------------------------------------------------------------------------------
# grouprl itself


@pytest.fixture(scope="module")
def grouprl_modules() -> dict[str, Module]:
    return parse_package(PACKAGE_DIR, shown_from=ROOT)


def test_grouprl_has_no_import_cycle(grouprl_modules):
    graph = import_graph(grouprl_modules)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in grouprl (module (line importing the next) → ...):\n" + \
        "\n".join(describe_cycle(c, graph) for c in cycles)


def test_grouprl_imports_only_optional_extras_inside_functions(grouprl_modules):
    found = function_level_imports(grouprl_modules, optional_extra_modules(PYPROJECT))
    assert not found, ("imports inside function bodies (move them to the module top; only "
                       "optional extras may be imported lazily):\n" + "\n".join(found))


def test_grouprl_graph_is_read_from_the_real_package(grouprl_modules):
    """The checks above see grouprl's real imports (a parser that reads nothing passes them)."""
    graph = import_graph(grouprl_modules)
    assert len(grouprl_modules) > 40
    assert "grouprl.batch" in graph["grouprl.advantages.rows"]  # from grouprl.batch import ...
    assert "grouprl.advantages.segments" in graph["grouprl.advantages.rows"]  # from .segments
    assert "grouprl.advantages.returns" in graph["grouprl.advantages"]  # __init__ → submodule
    assert "grouprl.advantages" not in graph["grouprl.advantages.rows"]  # own package: no edge


def test_optional_extras_come_from_pyproject():
    allowed = optional_extra_modules(PYPROJECT)
    assert {"scienceworld", "textworld_express", "math_verify", "sympy", "latex2sympy2_extended",
            "pyarrow", "datasets", "tensorboard", "torch.utils.tensorboard", "wandb",
            "matplotlib", "trl"} <= allowed
    core = {"torch", "numpy", "transformers", "tokenizers", "safetensors", "peft", "yaml", "tqdm",
            "huggingface_hub", "pytest", "hypothesis", "ruff"}
    assert not core & allowed


def test_optional_extras_normalise_names_and_reject_an_unknown_provider(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["torch>=2", "PyYAML>=6"]\n'
                         '[project.optional-dependencies]\nplot = ["Matplotlib[x]>=3", "pyyaml"]\n'
                         'math = ["math_verify>=0.9"]\ndev = ["pytest>=8"]\n')
    assert optional_extra_modules(pyproject, {}) == {"matplotlib", "math_verify"}
    assert optional_extra_modules(pyproject, {"math-verify": ("sympy",)}) == \
        {"matplotlib", "math_verify", "sympy"}
    with pytest.raises(ValueError, match=r"^EXTRA_PROVIDES: \['tensorboard'\] are not optional"):
        optional_extra_modules(pyproject, {"tensorboard": ("torch.utils.tensorboard",)})


# ---------------------------------------------------------------------------------------------
# the checkers on synthetic packages (each must catch what it is for)


def _package(tmp_path: Path, files: Mapping[str, str]) -> dict[str, Module]:
    """Write ``{"pkg/a.py": source, ...}`` under ``tmp_path`` and parse the package ``pkg``."""
    for rel, source in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return parse_package(tmp_path / "pkg")


def test_a_two_module_cycle_is_found_with_its_path(tmp_path):
    modules = _package(tmp_path, {"pkg/__init__.py": "",
                                  "pkg/a.py": "import os\nfrom pkg.b import f\n",
                                  "pkg/b.py": "from . import a\n\ndef f():\n    pass\n"})
    graph = import_graph(modules)
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert describe_cycle(["pkg.a", "pkg.b", "pkg.a"], graph) == \
        "pkg.a (pkg/a.py:2) → pkg.b (pkg/b.py:1) → pkg.a"


def test_a_package_import_runs_its_init(tmp_path):
    """``from pkg.sub import X`` runs ``pkg/sub/__init__.py``, which imports the importer back."""
    modules = _package(tmp_path, {"pkg/__init__.py": "",
                                  "pkg/sub/__init__.py": "from .impl import X\n",
                                  "pkg/sub/impl.py": "from pkg.user import helper\nX = 1\n",
                                  "pkg/user.py": "from pkg.sub import X\nhelper = 2\n"})
    assert find_cycles(import_graph(modules)) == [["pkg.sub", "pkg.sub.impl", "pkg.user",
                                                   "pkg.sub"]]
    # importing the submodule directly still runs the package __init__ first
    (tmp_path / "pkg/user.py").write_text("from pkg.sub.impl import X\nhelper = 2\n")
    modules = parse_package(tmp_path / "pkg")
    assert find_cycles(import_graph(modules)) == [["pkg.sub", "pkg.sub.impl", "pkg.user",
                                                   "pkg.sub"]]


def test_an_init_importing_its_submodules_is_not_a_cycle(tmp_path):
    modules = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import X, Y\n",
        "pkg/sub/__init__.py": "from .impl import X\nfrom .other import Y\nfrom . import other\n",
        "pkg/sub/impl.py": "from pkg.sub.other import Y\nfrom pkg.sub import other\nX = Y\n",
        "pkg/sub/other.py": "import pkg.sub.deep\nY = 1\n",
        "pkg/sub/deep.py": "import json\n",
    })
    graph = import_graph(modules)
    assert find_cycles(graph) == []
    assert graph["pkg.sub"] == {"pkg.sub.impl": "pkg/sub/__init__.py:1",
                                "pkg.sub.other": "pkg/sub/__init__.py:2"}
    assert graph["pkg.sub.impl"] == {"pkg.sub.other": "pkg/sub/impl.py:1"}


def test_a_submodule_reading_a_name_from_its_own_package_is_a_cycle(tmp_path):
    modules = _package(tmp_path, {"pkg/__init__.py": "",
                                  "pkg/sub/__init__.py": "from .impl import X\nY = 1\n",
                                  "pkg/sub/impl.py": "from pkg.sub import Y\nX = Y\n"})
    assert find_cycles(import_graph(modules)) == [["pkg.sub", "pkg.sub.impl", "pkg.sub"]]
    (tmp_path / "pkg/sub/impl.py").write_text("from . import Y\nX = Y\n")
    assert find_cycles(import_graph(parse_package(tmp_path / "pkg"))) == \
        [["pkg.sub", "pkg.sub.impl", "pkg.sub"]]


def test_type_checking_and_function_imports_are_not_edges(tmp_path):
    modules = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": ("from typing import TYPE_CHECKING\nimport typing\n"
                     "if TYPE_CHECKING:\n    from pkg.a import g\n"
                     "if typing.TYPE_CHECKING:\n    import pkg.a\nelse:\n    import pkg.c\n"
                     "def f():\n    from pkg import a\n"),
        "pkg/c.py": "",
    })
    graph = import_graph(modules)
    assert find_cycles(graph) == []
    assert set(graph["pkg.b"]) == {"pkg.c"}


def test_cycles_of_three_and_separate_components_are_all_reported(tmp_path):
    modules = _package(tmp_path, {"pkg/__init__.py": "",
                                  "pkg/a.py": "from . import b\n", "pkg/b.py": "from . import c\n",
                                  "pkg/c.py": "from . import a\nfrom . import d\n",
                                  "pkg/d.py": "", "pkg/x.py": "import pkg.y\n",
                                  "pkg/y.py": "from pkg import x\n"})
    assert find_cycles(import_graph(modules)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
                                                  ["pkg.x", "pkg.y", "pkg.x"]]


def test_a_function_level_import_is_reported_with_file_and_line(tmp_path):
    modules = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": ("import os\n\n\ndef f():\n    import json\n    return json\n\n\n"
                     "class C:\n    import math\n\n    def m(self):\n"
                     "        from . import b\n        from torch.utils import data\n"
                     "        import wandb, yaml\n"),
        "pkg/b.py": ("async def g():\n    def inner():\n        import json\n"
                     "    from torch.utils.tensorboard import SummaryWriter\n"
                     "    import wandb.sdk as w\n    from typing import TYPE_CHECKING\n"),
    })
    allowed = {"wandb", "torch.utils.tensorboard"}
    assert function_level_imports(modules, allowed) == [
        "pkg/a.py:5: import json",
        "pkg/a.py:13: from . import b",
        "pkg/a.py:14: from torch.utils import data",
        "pkg/a.py:15: import wandb, yaml",
        "pkg/b.py:3: import json",
        "pkg/b.py:6: from typing import TYPE_CHECKING",
    ]
    assert function_level_imports(modules, allowed | {"json", "yaml", "torch", "typing"}) == \
        ["pkg/a.py:13: from . import b"]


def test_type_checking_imports_inside_functions_are_allowed(tmp_path):
    modules = _package(tmp_path, {"pkg/__init__.py": "",
                                  "pkg/a.py": ("from typing import TYPE_CHECKING\n\ndef f():\n"
                                               "    if TYPE_CHECKING:\n        import json\n")})
    assert function_level_imports(modules, set()) == []
