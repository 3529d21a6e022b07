"""The evaluation library behind the asset checks: the health of every date and every stock.

One module per family of `evaluate_*` functions, each reading the warehouse with SQL and
returning an `AssetCheckResult`. The checks themselves are module-level objects in
`stocksync_dagster/defs/<domain>/checks.py`: one step per asset evaluates all of its checks.
"""

from collections.abc import Callable, Iterator, Mapping

import dagster as dg

Evaluator = Callable[[], dg.AssetCheckResult]

__all__ = ["Evaluator", "evaluate_selected"]


def evaluate_selected(
    context: dg.AssetCheckExecutionContext, evaluators: Mapping[dg.AssetCheckKey, Evaluator]
) -> Iterator[dg.AssetCheckResult]:
    """Evaluate only the checks this step was asked for, in the order of `evaluators`.

    A check left out of the run's selection (the UI's "Execute" on one check, or a run of only
    some checks) is not evaluated: Dagster shows it as not executed, not as failed.
    """
    selected = context.selected_asset_check_keys
    for key, evaluate in evaluators.items():
        if key in selected:
            yield evaluate()._replace(asset_key=key.asset_key, check_name=key.name)
