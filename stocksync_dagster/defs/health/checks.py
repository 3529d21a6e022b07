"""Asset checks on the warehouse tables (evaluated with SQL; see stocksync_dagster/checks/)."""

from stocksync_dagster.checks import build_asset_checks
from stocksync_dagster.core.settings import current_settings

asset_checks = build_asset_checks(current_settings().start_date)
