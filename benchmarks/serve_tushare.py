"""Run the fake Tushare server in its own process with a configurable rate-limit window."""

from __future__ import annotations

import argparse
import datetime as dt

from stocksync_dagster.core.sources.demo_market import DemoMarket
from tests.fakes.tushare_server import FakeTushareServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stocks", type=int, required=True)
    parser.add_argument("--origin", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=int, required=True)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    server = FakeTushareServer(
        DemoMarket(args.stocks, origin=args.origin),
        latency_ms=args.latency_ms,
        rate_limit=args.rate_limit,
        rate_window_seconds=args.window,
        as_of=args.as_of,
        port=args.port,
    )
    server.market.bars(args.origin, args.as_of)  # build the panel before the clock starts
    print(f"fake tushare at {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
