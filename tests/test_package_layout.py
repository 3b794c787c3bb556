"""The runtime package's shape: what a wheel ships must not reach for the source checkout.

Read from the source (every import, at module level or inside a function, since a lazy import
is an arrow too): the modules of nanogpt_kernels/ import one another without a circle, never
import the tooling (tools/, benchmarks/, tests/, scripts/) and never name a path of the
checkout outside the package (csrc/, benchmarks/, tests/, ...) or edit sys.path."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nanogpt_kernels"
TOOLING = ("tools", "benchmarks", "tests", "scripts", "setup")
CHECKOUT_PATHS = ("csrc", "benchmarks", "tests/", "tools/", "scripts/", "setup.py", "pyproject.toml")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EXTENSION = "nanogpt_kernels._C"  # compiled, so no source to read: a leaf of the graph


def imports_of(name: str) -> set[str]:
    """Modules `name` imports, as absolute names; `from pkg import x` counts as pkg.x when that
    is a module of ours, else as pkg."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES or full == EXTENSION else base)
    return found


def test_runtime_imports_no_tooling():
    offenders = {name: sorted(i for i in imports_of(name) if i.split(".")[0] in TOOLING) for name in MODULES}
    assert not {k: v for k, v in offenders.items() if v}


def test_runtime_import_graph_has_no_cycles():
    graph = {name: {i for i in imports_of(name) if i in MODULES and i != name} for name in MODULES}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_runtime_reads_no_path_outside_the_package():
    """Strings that name checkout paths (outside docstrings: the documentation may point a
    reader at csrc/), `sys.path` edits, and paths climbing above the package from __file__."""
    offenders = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                hits = [p for p in CHECKOUT_PATHS if p in node.value and ("/" in node.value or "." in p)]
                if hits:
                    offenders.append(f"{where}: string naming {hits}: {node.value[:80]!r}")
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(f"{where}: sys.path")
            if isinstance(node, ast.Attribute) and node.attr == "parent" and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "parent":
                offenders.append(f"{where}: .parent.parent (a path above the package)")
    assert not offenders, "\n".join(offenders)


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The three checks on a fake package that breaks each rule once."""
    fake = tmp_path / "nanogpt_kernels"
    fake.mkdir()
    (fake / "__init__.py").write_text("from nanogpt_kernels import a\n")
    (fake / "a.py").write_text('"""Reads csrc/ in its docstring: allowed."""\ndef f():\n    from . import b\n')
    (fake / "b.py").write_text("import sys\nimport tools.kernels\nfrom nanogpt_kernels.a import f\n"
                               "SRC = 'csrc/layernorm.cu'\nsys.path.insert(0, '.')\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "MODULES", {module_name(p): p for p in sorted(fake.rglob("*.py"))})
    for check, message in ((test_runtime_imports_no_tooling, "tools.kernels"),
                           (test_runtime_import_graph_has_no_cycles, "nanogpt_kernels.a -> nanogpt_kernels.b"),
                           (test_runtime_reads_no_path_outside_the_package, "csrc")):
        try:
            check()
        except AssertionError as e:
            assert message in str(e), (check.__name__, str(e))
        else:
            raise AssertionError(f"{check.__name__} passed on a package that breaks it")
