"""`python -m benchmarks ...` is `python benchmarks/run.py ...`."""

from benchmarks.run import main

if __name__ == "__main__":  # spawned child processes re-import this module: do not rerun
    main()
