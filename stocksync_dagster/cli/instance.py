"""The Dagster instance the CLI uses (`$DAGSTER_HOME`, else `./.stocksync/dagster`) and its code."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import dagster as dg

from stocksync_dagster.core.settings import STATE_DIR

# The code location: the same name as in workspace.yaml and [tool.dg.project], so runs the CLI
# queues carry the origin the UI (`stocksync ui`, `dagster dev`, `dg dev`) re-executes them from.
CODE_LOCATION = "stocksync_dagster"
DEFINITIONS_MODULE = "stocksync_dagster.definitions"

# Used when the CLI runs outside the project directory (no ./dagster.yaml to copy).
_MINIMAL_INSTANCE_CONFIG = """\
telemetry:
  enabled: false
python_logs:
  managed_python_loggers: [stocksync_dagster]
  python_log_level: INFO
"""


# An event log this project shipped in dagster.yaml earlier and no longer has; its files
# are Dagster's own, so the instance works on with the block removed.
_REMOVED_EVENT_LOG = re.compile(
    r"^event_log_storage:\n  module: stocksync_dagster\.instance_storage\n"
    r"  class: BatchedSqliteEventLogStorage\n(?:  .*\n)*",
    re.MULTILINE,
)


def _drop_removed_event_log(instance_config: Path) -> None:
    """Remove the retired event log block from a dagster.yaml the CLI copied earlier."""
    text = instance_config.read_text()
    updated = _REMOVED_EVENT_LOG.sub("", text)
    if updated != text:
        instance_config.write_text(updated)
        print(
            f"updated {instance_config}: removed the retired BatchedSqliteEventLogStorage "
            "block (Dagster's own SQLite event log reads the same files)",
            file=sys.stderr,
        )


def dagster_home() -> Path:
    """`$DAGSTER_HOME` if set, else `./.stocksync/dagster` (created; ./dagster.yaml copied in)."""
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        return Path(configured).resolve()
    home = (STATE_DIR / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    instance_config = home / "dagster.yaml"
    if instance_config.exists():
        _drop_removed_event_log(instance_config)
    else:
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
