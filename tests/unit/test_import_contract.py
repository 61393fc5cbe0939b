"""The import contract: nodes through one door, services without cycles.

Read from the source with `ast` (no import side effects), counting imports
inside functions too: an import moved into a function to dodge a cycle is
still a cycle.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports, anywhere in it (absolute names; `from X import Y` gives X
    and X.Y, so a submodule imported by name counts)."""
    found = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else \
        _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: nothing is imported at run time
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph(prefix: str) -> dict[str, set[str]]:
    files = sorted((ROOT / prefix.replace(".", "/")).rglob("*.py"))
    names = {_module_name(f): f for f in files}
    return {name: {m for m in _imports(path) if m in names and m != name}
            for name, path in names.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_it_finds_a_cycle_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_it_imports_libvirt_only_in_app_infra():
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "app").rglob("*.py"))
                 if "libvirt" in _imports(path) and path.relative_to(ROOT).parts[1] != "infra"]
    assert offenders == [], f"services and views reach nodes through app/infra: {offenders}"


def test_it_keeps_the_services_free_of_cycles():
    cycle = _cycle(_graph("app.services"))
    assert cycle is None, "services import each other in a circle: " + " -> ".join(cycle)


def test_it_keeps_the_engine_services_off_the_web_and_the_worker():
    engine = ["steps", "journal", "offline", "live", "engine", "disks", "timeline"]
    for name in engine:
        imported = _imports(ROOT / "app" / "services" / f"{name}.py")
        bad = sorted(m for m in imported if m.startswith(("worker", "flask_login", "app.api",
                                                          "app.migrations", "app.dashboard")))
        assert bad == [], f"app.services.{name} imports {bad}"


def _files(folder: str) -> list[pathlib.Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _imports_of(path: pathlib.Path, prefix: str) -> list[str]:
    """The modules named `prefix` or below it that a file imports."""
    return sorted(m for m in _imports(path) if m == prefix or m.startswith(prefix + "."))


def test_it_keeps_the_app_off_the_worker():
    offenders = {str(path.relative_to(ROOT)): _imports_of(path, "worker")
                 for path in _files("app") if _imports_of(path, "worker")}
    assert offenders == {}, f"the worker depends on the app, never the other way: {offenders}"


def test_it_keeps_the_benchmarks_off_the_tests():
    offenders = {str(path.relative_to(ROOT)): _imports_of(path, "tests")
                 for path in _files("bench") if _imports_of(path, "tests")}
    assert offenders == {}, ("bench/ shares helpers with the tests through lab/client.py and "
                             f"bench/fleet.py, never by importing tests/: {offenders}")


def _blueprint_packages() -> set[str]:
    """The packages of app/ that define a Flask blueprint (one per page or surface)."""
    return {path.relative_to(ROOT / "app").parts[0] for path in _files("app")
            if len(path.relative_to(ROOT / "app").parts) > 1 and "Blueprint(" in path.read_text()}


def _blueprint_crossings() -> dict[str, list[str]]:
    packages = _blueprint_packages()
    found = {}
    for path in _files("app"):
        parts = path.relative_to(ROOT / "app").parts
        if len(parts) < 2 or parts[0] not in packages:
            continue
        crossing = sorted(m for m in _imports(path) if m.split(".")[0] == "app"
                          and len(m.split(".")) > 1 and m.split(".")[1] in packages
                          and m.split(".")[1] != parts[0])
        if crossing:
            found[str(path.relative_to(ROOT))] = crossing
    return found


def test_it_knows_the_blueprint_packages():
    assert {"auth", "api", "servers", "migrations", "webhooks"} <= _blueprint_packages()


def test_it_keeps_blueprints_from_importing_one_another():
    """What two pages share lives in app/ (access, json_errors, models) or app/services."""
    crossings = _blueprint_crossings()
    assert crossings == {}, f"a blueprint package imports another one: {crossings}"
