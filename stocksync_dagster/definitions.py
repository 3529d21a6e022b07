"""The Dagster definitions: everything under `defs/`, loaded by Dagster's own loader.

`dagster dev -w workspace.yaml`, `dg dev` and `dagster asset materialize -m
stocksync_dagster.definitions` all load `defs` from here.
"""

import os
from pathlib import Path

import dagster as dg

from stocksync_dagster.executors import executor_from_env

# Dagster's own switch: a step's materializations of a range run (one per partition and asset)
# are stored in one INSERT instead of one transaction each, with Postgres instance storage
# (SQLite storage writes them one by one either way; the run's planned events are buffered too,
# but dagster-postgres stores those one by one). Read by Dagster at each event, in the process
# that executes the step; set it in the environment to override (0 turns it off).
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(executor=executor_from_env()),
)
"""The objects of `stocksync_dagster/defs/<domain>/`, plus the executor STOCKSYNC_EXECUTOR names."""
