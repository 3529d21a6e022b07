"""baostock worker processes: one login per process, every call under a watchdog.

The baostock client keeps ONE module-global socket (not thread-safe), blocks forever on a dead
server and spins at 100% CPU when the server closes mid-response. So every query runs in a
worker process (a fresh interpreter, `python -m` this module: never forked, since an inherited
socket hangs) that logs in on its own, with `socket.setdefaulttimeout` set. The parent
(`WorkerPool`) kills a worker whose task overruns, starts a fresh one (new process, new login)
and retries the task with exponential backoff and jitter. Workers return raw rows; the parent
parses each reply as it arrives. Each worker has its next task waiting in its pipe
(`PIPELINE_DEPTH`), so it starts the next call the moment a reply is sent, however busy the
parent is parsing, writing or holding the GIL.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from stocksync_dagster.core.errors import SourceUnavailableError

logger = logging.getLogger(__name__)

SUCCESS = "0"
# Parameter errors: retrying the same call cannot fix them.
PERMANENT_ERRORS = frozenset(f"1000400{i}" for i in range(5, 10)) | frozenset(
    f"100040{i}" for i in range(10, 19)
)
# Login refusals that name a cause the user must act on.
LOGIN_HINTS = {
    "10001005": "too many sessions for this account: lower `workers`",
    "10001011": "the account is blacklisted (too many sessions): lower `workers` and wait",
}
SPAWN_GRACE_SECONDS = 30.0  # process start + imports, on top of the login's call timeout
PIPELINE_DEPTH = 2  # tasks sent to a worker ahead of its replies: the one running + the next

Rows = list[list[str]]


@dataclass(frozen=True)
class Call:
    """One baostock query: a function of the `baostock` module and its keyword arguments."""

    function: str
    kwargs: dict[str, str]


@dataclass(frozen=True)
class Task:
    """Queries that succeed or fail together (e.g. one stock); `key` names the outcome."""

    key: str
    calls: tuple[Call, ...]


@dataclass
class Outcome:
    """The result of a task: `results` holds (fields, rows) per call, or None on failure."""

    key: str
    results: list[tuple[list[str], Rows]] | None
    attempts: int
    error_class: str = ""
    detail: str = ""
    function: str = ""

    @property
    def ok(self) -> bool:
        return self.results is not None


# ----- the child process ----------------------------------------------------------------------
def _login(bs: Any, context: Any) -> tuple[str, str]:
    old = getattr(context, "default_socket", None)
    if old is not None:
        with contextlib.suppress(OSError):
            old.close()
    try:
        result = bs.login()
    except Exception as exc:  # the client raises on some connect failures
        return "exception", f"{type(exc).__name__}: {exc}"
    return str(result.error_code), str(result.error_msg)


def _run_calls(bs: Any, calls: Sequence[Call]) -> tuple[Any, ...]:
    results = []
    for call in calls:
        rows: Rows = []
        try:
            rs = getattr(bs, call.function)(**call.kwargs)
            if rs is None:
                return ("error", "10004006", "client rejected the arguments", call.function, 0)
            while rs.next():
                rows.append(rs.get_row_data())
        except Exception as exc:
            return ("error", "exception", f"{type(exc).__name__}: {exc}", call.function, len(rows))
        # An error on page 2+ ends iteration silently: the code is the only evidence.
        if str(rs.error_code) != SUCCESS:
            return ("error", str(rs.error_code), str(rs.error_msg), call.function, len(rows))
        results.append((list(rs.fields), rows))
    return ("ok", results)


def _exit_with_parent() -> None:
    """Die when the parent does (a spinning call would otherwise outlive it)."""
    parent = os.getppid()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


class _ImportedOnFirstUse(types.ModuleType):
    """Stands in `sys.modules` for a module and imports the real one when an attribute is read.

    baostock imports pandas only for `ResultData.get_data`, which workers never call; importing
    it eagerly costs every worker process ~0.3 s of CPU at start. (`importlib.util.LazyLoader`
    does not help on Python 3.11: the `import` statement itself reads `__spec__` and loads it.)
    """

    def __getattr__(self, attribute: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


def _import_on_first_use(name: str) -> None:
    if name not in sys.modules:
        sys.modules[name] = _ImportedOnFirstUse(name)


def worker_main(
    conn_in: Connection, conn_out: Connection, host: str | None, port: int | None, timeout: float
) -> None:
    """Child process: log in, then run tasks from `conn_in` until told to stop (None) or EOF."""
    socket.setdefaulttimeout(timeout)  # before the client creates its socket
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    _import_on_first_use("pandas")
    import baostock as bs
    import baostock.common.context as context
    from baostock.common import contants

    if host is not None:
        contants.BAOSTOCK_SERVER_IP = host
        contants.BAOSTOCK_SERVER_PORT = port
    code, message = _login(bs, context)
    conn_out.send(("login", code, message))
    if code != SUCCESS:
        return
    while True:
        try:
            request = conn_in.recv()
        except (EOFError, OSError):
            return
        if request is None:
            break
        task_id, calls = request
        reply = _run_calls(bs, calls)
        relogin = (SUCCESS, "")
        if reply[0] == "error" and reply[1] not in PERMANENT_ERRORS:
            relogin = _login(bs, context)  # the socket may hold half a reply: start clean
        conn_out.send((task_id, reply, relogin))
        if relogin[0] != SUCCESS:
            return
    with contextlib.suppress(Exception):  # logging out is a courtesy
        bs.logout()


def _child() -> None:
    """Entry point: `python -m <this module> IN OUT HOST PORT TIMEOUT`."""
    fd_in, fd_out, host, port, timeout = sys.argv[1:6]
    worker_main(
        Connection(int(fd_in), writable=False),
        Connection(int(fd_out), readable=False),
        None if host == "-" else host,
        int(port),
        float(timeout),
    )


# ----- the parent side ----------------------------------------------------------------------
@dataclass
class _Pending:
    task: Task
    attempt: int = 1  # the attempt about to be made
    ready_at: float = 0.0
    task_id: int = 0  # the id it was last sent under


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    conn: Connection | None = None  # replies from the worker
    requests: Connection | None = None  # tasks to the worker
    state: str = "down"  # down, starting, idle, busy, gave_up
    deadline: float = 0.0  # for the login, or for the task running now (the first in `sent`)
    respawn_at: float = 0.0
    login_failures: int = 0
    last_login_error: str = ""
    sent: collections.deque[_Pending] = field(default_factory=collections.deque)  # in order
    task_id: int = 0


@dataclass
class WorkerPool:
    """A bounded set of logged-in worker processes that runs tasks with watchdog and retries."""

    server: tuple[str, int] | None
    size: int = 4
    call_timeout: float = 60.0
    max_attempts: int = 4
    backoff: float = 1.0
    source_name: str = "baostock"
    calls: int = 0
    _slots: list[_Slot] = field(default_factory=list)
    _queue: list[_Pending] = field(default_factory=list)  # tasks of the current run, not sent
    _done: int = 0  # tasks of the current run with an outcome
    _on_outcome: Callable[[Outcome], None] | None = None

    def __post_init__(self) -> None:
        self._slots = [_Slot(i) for i in range(max(1, self.size))]

    @property
    def server_label(self) -> str:
        return (
            f"{self.server[0]}:{self.server[1]}" if self.server else "the default baostock server"
        )

    # -- lifecycle --------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        # A fresh interpreter (not fork: an inherited socket hangs; not multiprocessing spawn:
        # it re-imports the caller's __main__). Tasks and replies travel over two pipes.
        task_r, task_w = os.pipe()
        reply_r, reply_w = os.pipe()
        host, port = self.server if self.server else ("-", 0)
        timeout = max(0.2, self.call_timeout * 0.8)
        root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        }
        argv = [sys.executable, "-m", __name__, str(task_r), str(reply_w), host, str(port)]
        try:
            slot.process = subprocess.Popen(
                [*argv, f"{timeout:g}"],
                pass_fds=(task_r, reply_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the client prints chatter to stdout
                env=env,
            )
        finally:
            os.close(task_r)
            os.close(reply_w)
        slot.conn = Connection(reply_r, writable=False)
        slot.requests = Connection(task_w, readable=False)
        slot.state = "starting"
        slot.deadline = time.monotonic() + self.call_timeout + SPAWN_GRACE_SECONDS
        logger.debug("started baostock worker %d (pid %s)", slot.index, slot.process.pid)

    def _kill(self, slot: _Slot, state: str = "down", respawn_in: float = 0.0) -> None:
        """Stop the worker; tasks waiting in its pipe (not started) go back to the queue."""
        if slot.process is not None:
            if slot.process.poll() is None:
                slot.process.kill()
            try:
                slot.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("baostock worker pid %s did not die", slot.process.pid)
        for conn in (slot.conn, slot.requests):
            if conn is not None:
                conn.close()
        while slot.sent:
            waiting = slot.sent.pop()
            self.calls -= len(waiting.task.calls)  # never made
            self._queue.insert(0, waiting)
        slot.process, slot.conn, slot.requests, slot.state = None, None, None, state
        slot.respawn_at = time.monotonic() + respawn_in

    def close(self) -> None:
        """Log every worker out and stop it; kill those that do not stop within a second."""
        for slot in self._slots:
            if slot.state == "idle" and slot.requests is not None:
                with contextlib.suppress(OSError):
                    slot.requests.send(None)
        for slot in self._slots:
            if slot.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.process.wait(timeout=1.0)
            slot.sent.clear()
            self._kill(slot, state="down")
        self._queue = []

    def live_pids(self) -> list[int]:
        """Process ids of the worker processes that are running now."""
        return [
            slot.process.pid
            for slot in self._slots
            if slot.process is not None and slot.process.poll() is None
        ]

    # -- running tasks ----------------------------------------------------------------------
    def _delay(self, attempts_done: int) -> float:
        return self.backoff * 2 ** (attempts_done - 1) * random.uniform(0.5, 1.5)

    def run(self, tasks: Sequence[Task], on_outcome: Callable[[Outcome], None]) -> None:
        """Run every task, handing each outcome to `on_outcome` as soon as it is final (so the
        caller parses while workers wait on the network). Raises SourceUnavailableError if no
        worker can log in."""
        for slot in self._slots:
            if slot.sent:  # replies still owed to a run that raised: start that worker afresh
                slot.sent.clear()
                self._kill(slot)
        self._queue = [_Pending(task) for task in tasks]
        self._done, self._on_outcome = 0, on_outcome
        active = min(len(self._slots), len(tasks))
        for slot in self._slots[:active]:
            if slot.state == "gave_up":
                slot.state, slot.login_failures = "down", 0
        while self._done < len(tasks):
            now = time.monotonic()
            live = [s for s in self._slots[:active] if s.state != "gave_up"]
            if not live:
                self.close()
                errors = "; ".join(sorted({s.last_login_error for s in self._slots[:active]}))
                raise SourceUnavailableError(
                    self.source_name,
                    "login",
                    f"no worker could log in to {self.server_label} "
                    f"after {self.max_attempts} attempts each ({errors})",
                    what_to_do="Check BAOSTOCK_SERVER and the network",
                )
            for slot in live:
                if slot.state == "down" and slot.respawn_at <= now:
                    self._spawn(slot)
            for depth in range(1, PIPELINE_DEPTH + 1):  # one task per worker first, then more
                for slot in live:
                    if len(slot.sent) < depth:
                        self._fill(slot, now, depth)
            self._wait(live, now)
            for slot in live:
                self._collect(slot)
            now = time.monotonic()
            for slot in live:
                if slot.state in ("starting", "busy") and slot.deadline < now:
                    self._on_timeout(slot)

    def _fill(self, slot: _Slot, now: float, depth: int = PIPELINE_DEPTH) -> None:
        """Send ready tasks to a logged-in worker until `depth` are in its pipe."""
        while slot.state in ("idle", "busy") and len(slot.sent) < depth:
            ready = next((p for p in self._queue if p.ready_at <= now), None)
            if ready is None:
                return
            self._queue.remove(ready)
            self._send(slot, ready, now)

    def _send(self, slot: _Slot, pending: _Pending, now: float) -> None:
        assert slot.requests is not None
        slot.task_id += 1
        pending.task_id = slot.task_id
        if not slot.sent:  # it starts at once: the watchdog runs from now
            slot.deadline = now + self.call_timeout * len(pending.task.calls)
        slot.sent.append(pending)
        slot.state = "busy"
        self.calls += len(pending.task.calls)
        with contextlib.suppress(OSError):  # a dead worker: _collect sees EOF, the task retries
            slot.requests.send((slot.task_id, pending.task.calls))

    def _wait(self, live: list[_Slot], now: float) -> None:
        times = [s.deadline for s in live if s.state in ("starting", "busy")]
        times += [s.respawn_at for s in live if s.state == "down"]
        if any(s.state in ("idle", "busy") and len(s.sent) < PIPELINE_DEPTH for s in live):
            times += [p.ready_at for p in self._queue]
        timeout = min(max(min(times, default=now + 1.0) - now, 0.0), 1.0)
        handles = [s.conn for s in live if s.conn is not None]
        if handles:
            wait(handles, timeout=timeout)
        else:
            time.sleep(timeout)

    def _collect(self, slot: _Slot) -> None:
        while slot.conn is not None:
            try:
                if not slot.conn.poll():
                    if slot.process is not None and slot.process.poll() is not None:
                        raise EOFError
                    return
                message = slot.conn.recv()
            except (EOFError, OSError):
                self._on_crash(slot)
                return
            if message[0] == "login":
                self._on_login(slot, message[1], message[2])
                continue
            task_id, reply, relogin = message
            if not slot.sent or slot.sent[0].task_id != task_id:
                logger.warning("baostock worker %d replied out of turn: restarting it", slot.index)
                self._on_crash(slot)
                return
            pending = slot.sent.popleft()
            now = time.monotonic()
            if slot.sent:  # the next task started when this reply was sent
                slot.deadline = now + self.call_timeout * len(slot.sent[0].task.calls)
            else:
                slot.state = "idle"
            if relogin[0] == SUCCESS:
                self._fill(slot, now)  # before parsing: the worker never waits for the parent
            self._on_reply(pending, reply)
            if relogin[0] != SUCCESS:
                self._on_login(slot, relogin[0], relogin[1])

    def _on_login(self, slot: _Slot, code: str, message: str) -> None:
        if code == SUCCESS:
            slot.state, slot.login_failures = "idle", 0
            return
        hint = LOGIN_HINTS.get(code, "")
        slot.last_login_error = f"error {code} {message}{': ' + hint if hint else ''}".strip()
        slot.login_failures += 1
        gave_up = slot.login_failures >= self.max_attempts
        logger.warning(
            "%s login to %s failed (%s), attempt %d of %d",
            self.source_name,
            self.server_label,
            slot.last_login_error,
            slot.login_failures,
            self.max_attempts,
        )
        self._kill(slot, "gave_up" if gave_up else "down", self._delay(slot.login_failures))

    def _on_reply(self, pending: _Pending, reply: tuple[Any, ...]) -> None:
        if reply[0] == "ok":
            self._finish(Outcome(pending.task.key, reply[1], pending.attempt))
            return
        _, code, message, function, rows_before = reply
        if code == "exception":
            error_class = "ClientException"
        elif rows_before:
            error_class = "PartialResult"
        elif code.startswith("10002"):
            error_class = "NetworkError"
        else:
            error_class = "BaostockError"
        detail = f"error {code} {message}".strip()
        if rows_before:
            detail += f" after {rows_before} rows (a later page failed)"
        self._retry(pending, error_class, detail, function, permanent=code in PERMANENT_ERRORS)

    def _on_timeout(self, slot: _Slot) -> None:
        running = slot.sent.popleft() if slot.sent else None
        if slot.state == "starting":
            self._kill(slot)
            self._on_login(slot, "timeout", f"no login reply within {self.call_timeout:g} s")
            return
        logger.warning(
            "%s task %s overran %.1f s: killing worker pid %s",
            self.source_name,
            running.task.key if running else "?",
            self.call_timeout,
            slot.process.pid if slot.process else "?",
        )
        self._kill(slot)
        if running is not None:
            detail = f"no complete reply within {self.call_timeout:g} s (hung or spinning call)"
            function = running.task.calls[0].function
            self._retry(running, "CallTimeout", detail, function)

    def _on_crash(self, slot: _Slot) -> None:
        running = slot.sent.popleft() if slot.sent else None
        exitcode = slot.process.poll() if slot.process is not None else None
        was_starting = slot.state == "starting"
        self._kill(slot)
        if was_starting:
            self._on_login(slot, "crash", f"worker exited during login (exit code {exitcode})")
        elif running is not None:
            detail = f"worker process died (exit code {exitcode})"
            function = running.task.calls[0].function
            self._retry(running, "WorkerCrashed", detail, function)

    def _finish(self, outcome: Outcome) -> None:
        self._done += 1
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _retry(
        self,
        pending: _Pending,
        error_class: str,
        detail: str,
        function: str,
        permanent: bool = False,
    ) -> None:
        if permanent or pending.attempt >= self.max_attempts:
            self._finish(
                Outcome(pending.task.key, None, pending.attempt, error_class, detail, function)
            )
            return
        logger.info("%s %s %s: %s; retrying", self.source_name, function, pending.task.key, detail)
        pending.ready_at = time.monotonic() + self._delay(pending.attempt)
        pending.attempt += 1
        self._queue.append(pending)


if __name__ == "__main__":
    _child()
