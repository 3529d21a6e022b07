"""Software-defined assets: reference data and the trading-day partitioned market tables."""
