"""Which days a check scans: the partitions of its run, or the whole history."""

import datetime as dt
from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class Scope:
    """Days [start, end]; None on a side means unbounded (the whole table)."""

    start: dt.date | None = None
    end: dt.date | None = None

    @property
    def label(self) -> str:
        if self.start is None and self.end is None:
            return "all history"
        return f"{self.start or '…'}..{self.end or '…'}"

    def within(self, first: dt.date | None, last: dt.date | None) -> "Scope":
        """Unbounded sides replaced by the table's first / last day."""
        return Scope(self.start or first, self.end or last)


ALL_HISTORY = Scope()


def run_scope(context: dg.AssetCheckExecutionContext) -> Scope:
    """The run's partition keys as a date range; the whole history when the run has none.

    Checks are unpartitioned (see docs/checks.md), but a check executed with its asset runs in
    that asset's partitioned run, whose keys (one, or a single-run range) the op context has.
    """
    op = context.op_execution_context
    if not (op.has_partition_key or op.has_partition_key_range):
        return ALL_HISTORY
    keys = sorted(op.partition_keys)
    return Scope(dt.date.fromisoformat(keys[0]), dt.date.fromisoformat(keys[-1]))
