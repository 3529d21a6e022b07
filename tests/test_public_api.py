"""The package uses Dagster's public API only: no import from `dagster._...`."""

import ast
from pathlib import Path

import stocksync_dagster

PACKAGE = Path(stocksync_dagster.__file__).parent


def _is_private(node: ast.ImportFrom) -> bool:
    module = node.module or ""
    if module == "dagster":
        return any(a.name.startswith("_") for a in node.names)
    return module.startswith("dagster._")


def private_dagster_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("dagster._")]
        elif isinstance(node, ast.ImportFrom) and _is_private(node):
            found.append(f"{node.module}")
    return found


def test_the_detector_sees_private_imports() -> None:
    assert private_dagster_imports("from dagster._utils.error import X\nimport dagster._core")
    assert private_dagster_imports("from dagster import _check")
    assert not private_dagster_imports("import dagster as dg\nfrom dagster import asset")


def test_no_module_of_the_package_imports_private_dagster_api() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := private_dagster_imports(path.read_text()))
    }
    assert offenders == {}
