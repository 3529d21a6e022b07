"""The step executor, chosen by `STOCKSYNC_EXECUTOR` when definitions load (docs/deployment.md).

- unset / `in_process`: every step of a run in the run's own process. On one machine this is
  the fast choice: a subprocess per step costs seconds of start-up (loading Dagster and the
  definitions) while the source steps run one at a time anyway (pool `market_source`); pools,
  retries and run monitoring work the same. A UI backfill of 10 demo partitions spent 50 s in
  per-step subprocesses with `multiprocess` and 5 s in total with `in_process`.
- `multiprocess`: Dagster's own default (each step in a subprocess of the run).
- `celery`: dagster-celery. Steps become Celery tasks on RabbitMQ or Redis
  (`STOCKSYNC_CELERY_BROKER`, `STOCKSYNC_CELERY_BACKEND`: `rpc://` or Redis). Steps in
  the source pool go to the `source` queue, so the number of workers on that queue bounds the
  load on the source; other steps go to dagster-celery's default queue `dagster`.

Workers must run with the same environment (STOCKSYNC_*, DAGSTER_PG_*) and the same Celery
settings: deploy/celery/worker.yaml repeats `CELERY_SETTINGS`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.settings import redact_url

EXECUTORS = ("multiprocess", "in_process", "celery")
BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss")
BACKEND_SCHEMES = ("rpc", "redis", "rediss")
# A task is acknowledged only after the step ends: if its worker dies, the broker hands the
# step to another worker instead of losing it (the run would wait for it forever). One task
# reserved per worker process, so a busy worker does not hold steps that an idle one could run.
CELERY_SETTINGS: Mapping[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}


def executor_from_env(env: Mapping[str, str] | None = None) -> dg.ExecutorDefinition | None:
    """The executor named by `STOCKSYNC_EXECUTOR`; None means Dagster's own default."""
    env = os.environ if env is None else env
    name = (env.get("STOCKSYNC_EXECUTOR") or "").strip().lower() or "in_process"
    if name not in EXECUTORS:
        raise ConfigError(
            "STOCKSYNC_EXECUTOR", f"unknown executor {name!r}", f"use one of {', '.join(EXECUTORS)}"
        )
    if name == "multiprocess":
        return None
    if name == "in_process":
        return dg.in_process_executor
    # Both required (no defaults): the workers read the same variables (deploy/celery/worker.yaml).
    broker = _validated_url(
        env, "STOCKSYNC_CELERY_BROKER", BROKER_SCHEMES, "e.g. pyamqp://user:password@host:5672//"
    )
    backend = _validated_url(
        env, "STOCKSYNC_CELERY_BACKEND", BACKEND_SCHEMES, "rpc:// with RabbitMQ, or redis://host/1"
    )
    if broker.startswith("redis") or backend.startswith("redis"):
        _require("redis", "STOCKSYNC_CELERY_BROKER")
    _require("dagster_celery", "STOCKSYNC_EXECUTOR")
    return build_celery_executor(
        # Env references: the URLs (and passwords) are read only when a run starts; the
        # definitions hold the variable names, never the values.
        broker={"env": "STOCKSYNC_CELERY_BROKER"},
        backend={"env": "STOCKSYNC_CELERY_BACKEND"},
    )


def _validated_url(
    env: Mapping[str, str], variable: str, schemes: tuple[str, ...], example: str
) -> str:
    url = (env.get(variable) or "").strip()
    if not url:
        raise ConfigError(variable, "not set; STOCKSYNC_EXECUTOR=celery needs it", example)
    scheme = url.partition("://")[0].lower()
    if "://" not in url or scheme not in schemes:
        raise ConfigError(
            variable,
            f"unsupported URL {redact_url(url)!r}",
            f"use one of {', '.join(s + '://' for s in schemes)}",
        )
    return url


def _require(module: str, variable: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(
            variable,
            f"needs the Python package {module!r}",
            "pip install 'stocksync-dagster[celery]'",
        ) from None


def build_celery_executor(broker: object, backend: object) -> dg.ExecutorDefinition:
    """dagster-celery's executor with the project's Celery settings.

    Source steps carry the op tag `dagster-celery/queue: source` (assets/policies.py), so they
    go to the `source` queue; everything else goes to dagster-celery's default queue.
    """
    from dagster_celery import celery_executor

    return celery_executor.configured(
        {"broker": broker, "backend": backend, "config_source": dict(CELERY_SETTINGS)},
        name="celery",
    )
