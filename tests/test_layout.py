"""The code's layout, read from the sources with `ast`: the library never imports the CLI,
no module imports itself back through others, no module is over 700 lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ensemble_mde", "base_learners", "meta_learner")
CLI_MODULES = ("ensemble_mde.cli", "ensemble_mde.commands")
MAX_LINES = 700


def modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The project modules `name` imports anywhere in its file (inside functions too): for
    `from pkg import x`, pkg.x when that is a module, else pkg."""
    out = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in out if m in known and m != name}


def is_cli(module: str) -> bool:
    return any(module == c or module.startswith(c + ".") for c in CLI_MODULES)


def test_the_library_never_imports_the_cli():
    known = modules()
    offenders = sorted(f"{name} imports {target}" for name, path in known.items()
                       if not is_cli(name) and name != "ensemble_mde.__main__"
                       for target in imports(name, path, known) if is_cli(target))
    assert offenders == []


def test_commands_never_import_cli_py():
    known = modules()
    offenders = sorted(name for name, path in known.items()
                       if name.startswith("ensemble_mde.commands") and "ensemble_mde.cli" in imports(name, path, known))
    assert offenders == []


def test_no_import_circles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert [" -> ".join(c) for c in cycles] == []


def test_no_module_over_700_lines():
    long = sorted(f"{path.relative_to(ROOT)}: {n}" for path in modules().values()
                  if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert long == []
