"""The Dagster instance the CLI uses: `$DAGSTER_HOME`, else `./.stocksync/dagster`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

from stocksync_dagster.core.settings import STATE_DIR

# Used when the CLI runs outside the project directory (no ./dagster.yaml to copy).
_MINIMAL_INSTANCE_CONFIG = """\
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


def open_instance() -> dg.DagsterInstance:
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()
