"""No function in app/ is longer than a screen: MAX_LINES, counted with `ast` from its `def` line
to its last line (docstring and comments included, decorators not). Alembic's generated
migrations (app/db_migrations/) are left out: they are written once, never read as code."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_LINES = 80


def _long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, length) of every function or method in source longer than limit."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        found.append((name, length))
                name += "."
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def test_it_measures_functions_methods_and_nested_ones():
    body = "\n".join(f"    x = {i}" for i in range(5))
    source = (f"def short():\n    pass\n\ndef long():\n{body}\n\n"
              f"class K:\n    def method(self):\n{body.replace('    ', '        ')}\n"
              f"        def inner():\n{body.replace('    ', '            ')}\n")
    assert _long_functions(source, limit=5) == [("long", 6), ("K.method", 12), ("K.method.inner", 6)]
    assert _long_functions(source, limit=12) == []


def test_no_function_in_the_app_is_over_80_lines():
    offenders = [f"{path.relative_to(ROOT)}:{name} ({length} lines)"
                 for path in sorted((ROOT / "app").rglob("*.py"))
                 if "db_migrations" not in path.relative_to(ROOT).parts
                 for name, length in _long_functions(path.read_text())]
    assert offenders == [], f"split these into functions of at most {MAX_LINES} lines: {offenders}"
