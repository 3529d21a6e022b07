"""Dagster definitions by domain, collected by `dg.load_from_defs_folder` (see definitions.py)."""
