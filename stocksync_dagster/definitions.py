"""The Dagster definitions: everything under `defs/`, loaded by Dagster's own loader.

`dagster dev -w workspace.yaml`, `dg dev` and `dagster asset materialize -m
stocksync_dagster.definitions` all load `defs` from here.
"""

from pathlib import Path

import dagster as dg

from stocksync_dagster.executors import executor_from_env

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(executor=executor_from_env()),
)
"""The objects of `stocksync_dagster/defs/<domain>/`, plus the executor STOCKSYNC_EXECUTOR names."""
