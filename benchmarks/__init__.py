"""Benchmarks users can run: `python -m benchmarks [--size tiny|full] [--only history,...]`.

Each benchmark returns `Row`s (one measured case each) and `Target`s (a goal and whether it was
met); `run.py` prints them as a table and writes `benchmarks/results/<name>.json`.
"""
