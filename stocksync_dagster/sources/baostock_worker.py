"""baostock worker processes: one login per process, every call under a watchdog.

The baostock client keeps ONE module-global socket (not thread-safe), blocks forever on a dead
server and spins at 100% CPU when the server closes mid-response. So every query runs in a
worker process (spawned, never forked: an inherited socket hangs) that logs in on its own, with
`socket.setdefaulttimeout` set. The parent (`WorkerPool`) kills a worker whose task overruns,
starts a fresh one (new process, new login) and retries the task with exponential backoff and
jitter. A worker returns raw rows; parsing stays in the parent.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from stocksync_dagster.errors import SourceUnavailableError

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
        try:
            old.close()
        except OSError:
            pass
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


def worker_main(conn: Connection, host: str | None, port: int | None, timeout: float) -> None:
    """Child process: log in, then run tasks from `conn` until told to stop (None) or EOF."""
    socket.setdefaulttimeout(timeout)  # before the client creates its socket
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the client prints chatter to stdout
    import baostock as bs
    import baostock.common.context as context
    from baostock.common import contants

    if host is not None:
        contants.BAOSTOCK_SERVER_IP = host
        contants.BAOSTOCK_SERVER_PORT = port
    code, message = _login(bs, context)
    conn.send(("login", code, message))
    if code != SUCCESS:
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            break
        task_id, calls = request
        reply = _run_calls(bs, calls)
        relogin = (SUCCESS, "")
        if reply[0] == "error" and reply[1] not in PERMANENT_ERRORS:
            relogin = _login(bs, context)  # the socket may hold half a reply: start clean
        conn.send((task_id, reply, relogin))
        if relogin[0] != SUCCESS:
            return
    try:
        bs.logout()
    except Exception:  # logging out is a courtesy
        pass


# ----- the parent side ----------------------------------------------------------------------
@dataclass
class _Pending:
    task: Task
    attempt: int = 1  # the attempt about to be made
    ready_at: float = 0.0


@dataclass
class _Slot:
    index: int
    process: Any = None
    conn: Connection | None = None
    state: str = "down"  # down, starting, idle, busy, gave_up
    deadline: float = 0.0
    respawn_at: float = 0.0
    login_failures: int = 0
    last_login_error: str = ""
    pending: _Pending | None = None
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

    def __post_init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._slots = [_Slot(i) for i in range(max(1, self.size))]

    @property
    def server_label(self) -> str:
        return f"{self.server[0]}:{self.server[1]}" if self.server else "the default baostock server"

    # -- lifecycle --------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        host, port = self.server if self.server else (None, None)
        timeout = max(0.2, self.call_timeout * 0.8)
        process = self._ctx.Process(
            target=worker_main,
            args=(child, host, port, timeout),
            name=f"baostock-worker-{slot.index}",
            daemon=True,
        )
        process.start()
        child.close()
        slot.process, slot.conn, slot.state = process, parent, "starting"
        slot.deadline = time.monotonic() + self.call_timeout + SPAWN_GRACE_SECONDS
        logger.debug("started %s (pid %s)", process.name, process.pid)

    def _kill(self, slot: _Slot, state: str = "down", respawn_in: float = 0.0) -> None:
        if slot.process is not None:
            if slot.process.is_alive():
                slot.process.kill()
            slot.process.join(timeout=5)
        if slot.conn is not None:
            slot.conn.close()
        slot.process, slot.conn, slot.state = None, None, state
        slot.respawn_at = time.monotonic() + respawn_in

    def close(self) -> None:
        """Log every worker out and stop it; kill those that do not stop within a second."""
        for slot in self._slots:
            if slot.state == "idle" and slot.conn is not None:
                try:
                    slot.conn.send(None)
                except OSError:
                    pass
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(timeout=1.0)
            self._kill(slot, state="down")

    # -- running tasks ----------------------------------------------------------------------
    def _delay(self, attempts_done: int) -> float:
        return self.backoff * 2 ** (attempts_done - 1) * random.uniform(0.5, 1.5)

    def run(self, tasks: Sequence[Task]) -> list[Outcome]:
        """Run every task; return outcomes in task order. Raises SourceUnavailableError if no
        worker can log in."""
        queue = [_Pending(task) for task in tasks]
        outcomes: dict[int, Outcome] = {}
        index_of = {id(p): i for i, p in enumerate(queue)}
        active = min(len(self._slots), len(tasks))
        for slot in self._slots[:active]:
            if slot.state == "gave_up":
                slot.state, slot.login_failures = "down", 0
        while len(outcomes) < len(tasks):
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
                    what_to_do="Check BAOSTOCK_SERVER and the network, then retry the run",
                )
            for slot in live:
                if slot.state == "down" and slot.respawn_at <= now:
                    self._spawn(slot)
            for slot in live:
                if slot.state != "idle":
                    continue
                ready = next((p for p in queue if p.ready_at <= now), None)
                if ready is None:
                    break
                queue.remove(ready)
                self._send(slot, ready)
            self._wait(live, queue, now)
            for slot in live:
                self._collect(slot, queue, outcomes, index_of)
            now = time.monotonic()
            for slot in live:
                if slot.state in ("starting", "busy") and slot.deadline < now:
                    self._on_timeout(slot, queue, outcomes, index_of)
        return [outcomes[i] for i in range(len(tasks))]

    def _send(self, slot: _Slot, pending: _Pending) -> None:
        assert slot.conn is not None
        slot.task_id += 1
        slot.pending, slot.state = pending, "busy"
        slot.deadline = time.monotonic() + self.call_timeout * len(pending.task.calls)
        self.calls += len(pending.task.calls)
        try:
            slot.conn.send((slot.task_id, pending.task.calls))
        except OSError:
            pass  # the worker died: _collect sees EOF and retries the task

    def _wait(self, live: list[_Slot], queue: list[_Pending], now: float) -> None:
        times = [s.deadline for s in live if s.state in ("starting", "busy")]
        times += [s.respawn_at for s in live if s.state == "down"]
        if any(s.state == "idle" for s in live):
            times += [p.ready_at for p in queue]
        timeout = min(max(min(times, default=now + 1.0) - now, 0.0), 1.0)
        handles: list[Any] = [s.conn for s in live if s.conn is not None]
        handles += [s.process.sentinel for s in live if s.process is not None]
        if handles:
            wait(handles, timeout=timeout)
        else:
            time.sleep(timeout)

    def _collect(self, slot: _Slot, queue: list, outcomes: dict, index_of: dict) -> None:
        while slot.conn is not None:
            try:
                if not slot.conn.poll():
                    if slot.process is not None and not slot.process.is_alive():
                        raise EOFError
                    return
                message = slot.conn.recv()
            except (EOFError, OSError):
                self._on_crash(slot, queue, outcomes, index_of)
                return
            if message[0] == "login":
                self._on_login(slot, message[1], message[2])
                continue
            _, reply, relogin = message
            pending = slot.pending
            slot.pending, slot.state = None, "idle"
            if pending is not None:
                self._on_reply(pending, reply, queue, outcomes, index_of)
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
            self.source_name, self.server_label, slot.last_login_error,
            slot.login_failures, self.max_attempts,
        )  # fmt: skip
        self._kill(slot, "gave_up" if gave_up else "down", self._delay(slot.login_failures))

    def _on_reply(self, pending: _Pending, reply: tuple, queue: list, outcomes: dict, index_of: dict) -> None:  # fmt: skip
        if reply[0] == "ok":
            outcomes[index_of[id(pending)]] = Outcome(pending.task.key, reply[1], pending.attempt)
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
        self._retry(pending, error_class, detail, function, queue, outcomes, index_of,
                    permanent=code in PERMANENT_ERRORS)  # fmt: skip

    def _on_timeout(self, slot: _Slot, queue: list, outcomes: dict, index_of: dict) -> None:
        pending = slot.pending
        if slot.state == "starting":
            self._kill(slot)
            self._on_login(slot, "timeout", f"no login reply within {self.call_timeout:g} s")
            return
        logger.warning(
            "%s task %s overran %.1f s: killing worker pid %s",
            self.source_name, pending.task.key if pending else "?", self.call_timeout,
            slot.process.pid if slot.process else "?",
        )  # fmt: skip
        slot.pending = None
        self._kill(slot)
        if pending is not None:
            detail = f"no complete reply within {self.call_timeout:g} s (hung or spinning call)"
            function = pending.task.calls[0].function
            self._retry(pending, "CallTimeout", detail, function, queue, outcomes, index_of)

    def _on_crash(self, slot: _Slot, queue: list, outcomes: dict, index_of: dict) -> None:
        pending = slot.pending
        exitcode = slot.process.exitcode if slot.process is not None else None
        was_starting = slot.state == "starting"
        slot.pending = None
        self._kill(slot)
        if was_starting:
            self._on_login(slot, "crash", f"worker exited during login (exit code {exitcode})")
        elif pending is not None:
            detail = f"worker process died (exit code {exitcode})"
            function = pending.task.calls[0].function
            self._retry(pending, "WorkerCrashed", detail, function, queue, outcomes, index_of)

    def _retry(self, pending: _Pending, error_class: str, detail: str, function: str, queue: list,
               outcomes: dict, index_of: dict, permanent: bool = False) -> None:  # fmt: skip
        if permanent or pending.attempt >= self.max_attempts:
            outcomes[index_of[id(pending)]] = Outcome(
                pending.task.key, None, pending.attempt, error_class, detail, function
            )
            return
        logger.info("%s %s %s: %s; retrying", self.source_name, function, pending.task.key, detail)
        pending.ready_at = time.monotonic() + self._delay(pending.attempt)
        pending.attempt += 1
        queue.append(pending)
