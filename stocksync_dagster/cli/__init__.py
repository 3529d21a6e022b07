"""The `stocksync` command line: demo, status, doctor, backfill, ui."""
