"""The project's definitions with a write that stops inside its transaction (kill -9 tests).

A run worker that imports this module writes its pid to `$STOCKSYNC_CRASH_READY` once the
`daily_bar` rows are written but not committed, then waits to be killed.
"""

import os
import time
from pathlib import Path

from stocksync_dagster.core import sync
from stocksync_dagster.definitions import defs

_upsert_frame = sync.upsert_frame


def _upsert_then_wait(connection, table, frame, **options):  # type: ignore[no-untyped-def]
    stats = _upsert_frame(connection, table, frame, **options)
    ready = os.environ.get("STOCKSYNC_CRASH_READY")
    if ready and table.name == "daily_bar":
        partial = Path(f"{ready}.tmp")
        partial.write_text(str(os.getpid()))
        partial.rename(ready)
        time.sleep(600)
    return stats


sync.upsert_frame = _upsert_then_wait

__all__ = ["defs"]
