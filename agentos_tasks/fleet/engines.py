"""Where fleet requests execute: `local` (threads on this machine, each running the
request's processes) or `ray` (one Ray task per request, retried on worker death, on any
node of the cluster). Both take a job dict and give back worker.execute's result dict
(or the exception that ended the task for good)."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import re
import socket
import time
from typing import Any, Protocol

from agentos_tasks.errors import EXIT_USAGE, AgentosError
from agentos_tasks.fleet import worker

RAY_MAX_RETRIES = 3  # a task whose worker process dies is run again, on any node


class Engine(Protocol):
    name: str
    start_seconds: float  # how long the engine took to start (Ray's start-up), reported

    def submit(self, job: dict[str, Any]) -> Any: ...

    def wait_any(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        ...

    def close(self) -> None: ...


class LocalEngine:
    name = "local"
    start_seconds = 0.0

    def __init__(self, jobs: int) -> None:
        self.pool = cf.ThreadPoolExecutor(max_workers=max(1, jobs),
                                          thread_name_prefix="agentos-fleet")

    def submit(self, job: dict[str, Any]) -> Any:
        return self.pool.submit(worker.execute, job)

    def wait_any(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        out: list[tuple[Any, dict[str, Any] | BaseException]] = []
        for future in done:
            error = future.exception()
            out.append((future, error if error is not None else future.result()))
        return out

    def close(self) -> None:
        # on Ctrl-C, requests not yet started never start
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayEngine:
    """Ray tasks. `address` is a running cluster (`ray start --head`; "auto" finds the
    local one); without it, a local Ray instance is started for this fleet."""

    name = "ray"

    def __init__(self, address: str | None, jobs: int) -> None:
        try:
            import ray
        except ImportError:
            raise AgentosError("--engine ray needs the ray package", code=EXIT_USAGE,
                               hint="pip install -e '.[ray]'") from None
        self.ray = ray
        started = time.monotonic()
        if address:
            _reachable(address)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": jobs}
            # workers import the driver's agentos_tasks (a checkout on PYTHONPATH too) and
            # see its AGENTOS_* settings (executor key location, test hooks)
            passed = {name: value for name, value in os.environ.items()
                      if name == "PYTHONPATH" or name.startswith("AGENTOS_")}
            if passed:
                kwargs["runtime_env"] = {"env_vars": passed}
            try:
                ray.init(logging_level=logging.ERROR, log_to_driver=False, **kwargs)
            except (ValueError, ConnectionError) as exc:
                raise AgentosError(f"cannot connect to Ray at {address}: {exc}",
                                   code=EXIT_USAGE, hint="give --address HOST:PORT of a "
                                   "running cluster (ray start --head)") from None
        self.task = ray.remote(max_retries=RAY_MAX_RETRIES, num_cpus=1)(worker.execute)
        self.start_seconds = round(time.monotonic() - started, 3)

    def submit(self, job: dict[str, Any]) -> Any:
        return self.task.remote(job)

    def wait_any(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out: list[tuple[Any, dict[str, Any] | BaseException]] = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as exc:  # the task failed for good (retries exhausted)
                out.append((ref, RuntimeError(_said(exc))))
        return out

    def close(self) -> None:
        self.ray.shutdown()


def _reachable(address: str) -> None:
    """A `host:port` cluster address must answer within seconds: ray.init would retry a
    dead one for minutes, printing warnings."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": Ray's own resolution
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise AgentosError(f"no Ray cluster answers at {address} ({exc.strerror or exc})",
                           code=EXIT_USAGE, hint="start one with `ray start --head` and "
                           "give its address, or leave --address out for a local one") from None


def _said(exc: BaseException) -> str:
    """Ray's error text without its colours and traceback: the last line that says what."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def make_engine(name: str, *, jobs: int, address: str | None) -> Engine:
    if name == "local":
        return LocalEngine(jobs)
    if name == "ray":
        return RayEngine(address, jobs)
    raise AgentosError(f"unknown engine {name!r}", code=EXIT_USAGE, hint="local or ray")
