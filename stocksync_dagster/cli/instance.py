"""The Dagster instance the CLI uses (`$DAGSTER_HOME`, else `./.stocksync/dagster`) and its code."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

from stocksync_dagster.core.settings import STATE_DIR

# The code location: the same name as in workspace.yaml and [tool.dg.project], so runs the CLI
# queues carry the origin the UI (`stocksync ui`, `dagster dev`, `dg dev`) re-executes them from.
CODE_LOCATION = "stocksync_dagster"
DEFINITIONS_MODULE = "stocksync_dagster.definitions"

# Used when the CLI runs outside the project directory (no ./dagster.yaml to copy).
_MINIMAL_INSTANCE_CONFIG = """\
event_log_storage:
  module: stocksync_dagster.instance_storage
  class: BatchedSqliteEventLogStorage
telemetry:
  enabled: false
python_logs:
  managed_python_loggers: [stocksync_dagster]
  python_log_level: INFO
"""


def dagster_home() -> Path:
    """`$DAGSTER_HOME` if set, else `./.stocksync/dagster` (created; ./dagster.yaml copied in)."""
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        return Path(configured).resolve()
    home = (STATE_DIR / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    instance_config = home / "dagster.yaml"
    if not instance_config.exists():
        project_config = Path("dagster.yaml")
        if project_config.is_file():
            shutil.copyfile(project_config, instance_config)
        else:
            instance_config.write_text(_MINIMAL_INSTANCE_CONFIG)
    return home


def instance_location() -> Path:
    """Where the instance lives (`$DAGSTER_HOME`, else `./.stocksync/dagster`), not created."""
    configured = os.environ.get("DAGSTER_HOME")
    return Path(configured).resolve() if configured else (STATE_DIR / "dagster").resolve()


def existing_dagster_home() -> Path | None:
    """The instance directory if it exists; unlike `dagster_home()`, it creates nothing."""
    home = instance_location()
    return home if home.is_dir() else None


def existing_instance() -> dg.DagsterInstance | None:
    """The persistent instance if its directory exists, else None (and nothing is created)."""
    home = existing_dagster_home()
    if home is None:
        return None
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def workspace_file() -> Path:
    """A workspace file in the instance directory naming the project's one code location."""
    path = dagster_home() / "stocksync-workspace.yaml"
    text = (
        "# Written by the stocksync CLI: the project's code location, wherever the CLI runs.\n"
        "load_from:\n"
        "  - python_module:\n"
        f"      module_name: {DEFINITIONS_MODULE}\n"
        f"      location_name: {CODE_LOCATION}\n"
    )
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def open_instance() -> dg.DagsterInstance:
    """The persistent instance (and `DAGSTER_HOME` pointing at it, for `dagster` subprocesses)."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()
