"""The Dagster-free core: sources, warehouse, validation, calendar, settings and the sync itself.

Nothing under `stocksync_dagster.core` imports `dagster` (a test enforces it): the engine can be
used, tested and benchmarked on its own, and the Dagster layer (`stocksync_dagster.defs`) wraps it.
"""
