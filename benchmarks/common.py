"""Shared pieces: result rows, process-tree RSS sampling, fake servers, scratch databases."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PG_ADMIN_URL = os.environ.get(
    "STOCKSYNC_BENCH_PG",
    os.environ.get("STOCKSYNC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)


@dataclass
class Row:
    """One measured case. `extrapolated` marks numbers computed from a timed sample."""

    bench: str
    case: str
    seconds: float
    calls: int | None = None
    rows: int | None = None
    stocks: int | None = None
    rss_mb: float | None = None
    extrapolated: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.seconds if self.rows and self.seconds > 0 else None

    @property
    def stocks_per_s(self) -> float | None:
        return self.stocks / self.seconds if self.stocks and self.seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": self.rows_per_s, "stocks_per_s": self.stocks_per_s}


@dataclass
class Target:
    """A goal from issue 7 and what was measured against it."""

    bench: str
    goal: str
    measured: str
    met: bool


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gb = round(int(first.split()[1]) / 1024**2, 1)
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ----- memory ---------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                text = (task / "children").read_text().split()
                for child in map(int, text):
                    found.append(child)
                    todo.append(child)
    return found


def _rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def tree_rss(pid: int, exclude: set[int]) -> int:
    """RSS of `pid` and its descendants, minus `exclude` (and their descendants)."""
    try:
        import psutil
    except ImportError:
        skip = set(exclude) | {c for e in exclude for c in _children(e)}
        return sum(_rss_bytes(p) for p in [pid, *_children(pid)] if p not in skip)
    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        skip = set(exclude)
        for e in exclude:
            with contextlib.suppress(psutil.Error):
                skip |= {c.pid for c in psutil.Process(e).children(recursive=True)}
        for process in [root, *root.children(recursive=True)]:
            if process.pid in skip:
                continue
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
    return total


class PeakRss:
    """Samples this process tree's RSS every `interval` s (fake servers excluded)."""

    def __init__(self, exclude: set[int] | None = None, interval: float = 0.1) -> None:
        self.exclude = exclude or set()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid(), self.exclude))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(os.getpid(), self.exclude))

    @property
    def mb(self) -> float:
        return round(self.peak / 1e6, 1)


# ----- fake servers in their own processes -----------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server_process(module: str, args: list[str], ready: str) -> Iterator[subprocess.Popen[str]]:
    """Run `python -m module args` (a fake server) until the block ends; wait for `ready`."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if ready not in line:
            raise RuntimeError(f"{module} did not start: {line}{process.stdout.read()[:2000]}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ----- scratch databases ----------------------------------------------------------------------
@contextlib.contextmanager
def scratch_postgres(admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A new database on the server of `admin_url`, dropped afterwards; yields its URL."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"stocksync_bench_{uuid.uuid4().hex[:10]}"
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from stocksync_dagster.core.warehouse import engine as warehouse_engine

        warehouse_engine._ready.discard(url)
        with engine.connect() as connection:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        engine.dispose()


def postgres_reachable(admin_url: str = PG_ADMIN_URL) -> str | None:
    """None if the server answers, else why not."""
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    finally:
        engine.dispose()
    return None


class FreshProcessError(RuntimeError):
    """A benchmark case failed in its own interpreter; the message is the child's traceback."""


def _call_reporting(function: Callable[..., T], *args: Any) -> T:
    try:
        return function(*args)
    except Exception:  # not every exception pickles (some hold tracebacks): send the text
        raise FreshProcessError(traceback.format_exc()) from None


def in_fresh_process(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a new interpreter (spawned), so its RSS is not this process's.

    The benchmark process keeps what earlier cases allocated (and Python rarely gives memory
    back): measured in place, every case would carry the ones before it.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result = pool.apply(_call_reporting, (function, *args))
        # let the child exit by itself: the pool's exit terminates it (SIGTERM), which Dagster's
        # signal handler in the child turns into a KeyboardInterrupt traceback
        pool.close()
        pool.join()
        return result
