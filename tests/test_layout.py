"""The project's shape as Dagster and its users see it: the defs folder, `dg`, the core's purity."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from stocksync_dagster.definitions import defs

PROJECT = Path(__file__).resolve().parents[1]
DG = str(Path(sys.executable).with_name("dg"))
DAGSTER = str(Path(sys.executable).with_name("dagster"))
ENV = {**os.environ, "STOCKSYNC_SOURCE": "demo"}


def test_core_imports_nothing_from_dagster() -> None:
    """The engine (sources, warehouse, validation, calendar, sync) is usable without Dagster."""
    code = (
        "import pkgutil, importlib, sys\n"
        "import stocksync_dagster.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'stocksync_dagster.core.'):\n"
        "    if '.migrations' not in m.name: importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'dagster' or n.startswith('dagster.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"core pulled in dagster: {out.stdout[:300]}"


def test_assets_are_grouped_by_domain() -> None:
    groups = {spec.key.to_user_string(): spec.group_name for spec in defs.resolve_all_asset_specs()}
    assert groups == {
        "trade_calendar": "reference",
        "stock_basic": "reference",
        "daily_bars": "market",
        "adj_factor": "market",
    }


def test_every_job_schedule_and_sensor_has_a_description() -> None:
    repository = defs.get_repository_def()
    named = [
        *(j for j in repository.get_all_jobs() if not j.name.startswith("__")),
        *repository.schedule_defs,
        *repository.sensor_defs,
    ]
    assert named
    assert [d.name for d in named if not (d.description or "").strip()] == []


def test_one_code_location_name_everywhere() -> None:
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    workspace = yaml.safe_load((PROJECT / "workspace.yaml").read_text())
    names = {
        pyproject["tool"]["dagster"]["code_location_name"],
        pyproject["tool"]["dg"]["project"]["code_location_name"],
        *(entry["python_module"]["location_name"] for entry in workspace["load_from"]),
    }
    assert names == {"stocksync_dagster"}


@pytest.mark.slow
def test_dg_check_defs_passes() -> None:
    out = subprocess.run(
        [DG, "check", "defs"], cwd=PROJECT, capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "All definitions loaded successfully" in out.stdout + out.stderr


@pytest.mark.slow
def test_dagster_definitions_validate_workspace_passes() -> None:
    out = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Validation successful for code location stocksync_dagster" in out.stderr + out.stdout
