"""The package uses Dagster's public API only: no import from `dagster._...`."""

import ast
from pathlib import Path

import stocksync_dagster

PACKAGE = Path(stocksync_dagster.__file__).parent


def private_dagster_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("dagster._")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("dagster._") or (
                node.module == "dagster" and any(a.name.startswith("_") for a in node.names)
            ):
                found.append(node.module)
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
