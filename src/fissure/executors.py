"""Where a run's independent tasks go: this process (``serial``), a local process pool
(``local[:N]``) or Ray (``ray`` starts a local Ray, ``ray://host:port`` joins a cluster).

A task is a picklable input; the work is a module-level generator function of it that yields
rows and writes nothing. :meth:`Executor.run` hands back :class:`Event`\\ s in completion
order, and the caller (the driver) writes every row as it arrives: a task that fails or a
worker that is lost costs only its own rows, and ``--resume`` redoes only the missing tasks.
In-process, rows arrive one by one as they are made; from a pool or Ray, a task's rows
arrive together when it finishes. A pool worker killed by the system breaks the whole pool: the
tasks not yet finished are all reported failed (what finished is kept); Ray retries a task whose
worker died and reports it failed only past its retries.

Every executor runs the same function on the same inputs, so results do not depend on the
executor as long as each task sets its own torch threads (the lab's and the probes' tasks do).
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, UserError

KINDS = ("serial", "local", "ray")
DEFAULT = "serial"  # measured: on a 2-core machine a pool of torch jobs was not faster (benchmarks/README.md)
MAX_WORKERS = 1024

Work = Callable[[Any], Iterable[Any]]


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed ``--executor`` value."""

    kind: str = DEFAULT
    workers: int | None = None  # local: pool size (None = the cores / threads per task)
    address: str | None = None  # ray: "ray://host:port" (None = start a local Ray)

    def __str__(self) -> str:
        if self.kind == "local" and self.workers:
            return f"local:{self.workers}"
        return self.address or self.kind


def parse_executor(text: str | None) -> ExecutorSpec:
    """``serial``, ``local``, ``local:N``, ``ray`` or ``ray://host:port``; a ConfigError otherwise."""
    text = (text or DEFAULT).strip()
    if text in ("serial", "local", "ray"):
        return ExecutorSpec(text)
    if text.startswith("local:"):
        n = text[len("local:"):]
        if not n.isdigit() or not 1 <= int(n) <= MAX_WORKERS:
            raise ConfigError(f"--executor {text}: the pool size must be a whole number from 1 to {MAX_WORKERS}")
        return ExecutorSpec("local", workers=int(n))
    if text.startswith("ray://"):
        host, _, port = text[len("ray://"):].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--executor {text}: a Ray address is ray://host:port")
        return ExecutorSpec("ray", address=text)
    raise ConfigError(f"unknown --executor '{text}' (serial, local, local:N, ray or ray://host:port)")


@dataclass
class Event:
    """A row a task made, or its failure (``error``: one line; ``detail``: the traceback)."""

    task: Any
    row: Any = None
    error: str | None = None
    detail: str = ""


def _all_rows(work: Work, task: Any) -> list:
    """What a remote worker runs: the whole task, its rows in one list."""
    return list(work(task))


def _failure(task: Any, exc: BaseException) -> Event:
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Event(task, error=f"{type(exc).__name__}: {exc}".splitlines()[0], detail=detail)


class Executor:
    """Runs tasks; use as a context manager (a pool or a Ray connection is opened on entry)."""

    in_process = False
    parallelism = 1  # how many tasks run at once (known once entered)

    def __init__(self, spec: ExecutorSpec, cpus_per_task: int = 1) -> None:
        self.spec, self.cpus_per_task = spec, max(1, cpus_per_task)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, work: Work, tasks: list) -> Iterator[Event]:
        raise NotImplementedError


class SerialExecutor(Executor):
    in_process = True
    parallelism = 1

    def run(self, work: Work, tasks: list) -> Iterator[Event]:
        for task in tasks:
            try:
                for row in work(task):
                    yield Event(task, row)
            except Exception as exc:  # noqa: BLE001 - a failed task is reported, the others go on
                yield _failure(task, exc)


class LocalExecutor(Executor):
    """A ``spawn`` process pool: each worker is a fresh interpreter (no forked torch state)."""

    def __enter__(self) -> LocalExecutor:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers = self.spec.workers or max(1, (os.cpu_count() or 1) // self.cpus_per_task)
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        self.parallelism = self.workers
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, work: Work, tasks: list) -> Iterator[Event]:
        from concurrent.futures import as_completed

        futures = {self.pool.submit(_all_rows, work, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                rows = future.result()
            except Exception as exc:  # noqa: BLE001 - includes a lost worker (BrokenProcessPool)
                yield _failure(task, exc)
                continue
            for row in rows:
                yield Event(task, row)


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """A one-line error at once when nothing listens at a ``ray://host:port`` address (Ray's client
    would retry for about 30 seconds before saying so)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # let Ray parse what it accepts
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot connect to the Ray cluster at {address}: nothing answers at {host}:{port} "
                        f"({exc.strerror or type(exc).__name__})") from None


class RayExecutor(Executor):
    """Ray: a local instance started (and stopped) here, one already started in this process, or
    a cluster at ``ray://host:port``. Each task asks Ray for ``cpus_per_task`` CPUs."""

    def __enter__(self) -> RayExecutor:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'fissure[scale]'") from None
        self.ray, self.started = ray, False
        if not ray.is_initialized():
            if self.spec.address:
                _check_reachable(self.spec.address)
            try:
                with warnings.catch_warnings():  # its connection warning repeats the error below
                    warnings.simplefilter("ignore")
                    ray.init(address=self.spec.address, include_dashboard=False, logging_level="ERROR",
                             log_to_driver=True)
            except Exception as exc:  # noqa: BLE001 - unreachable address, no client support, ...
                ray.shutdown()  # a failed client connection leaves state behind that breaks a later ray.init
                what = f"connect to the Ray cluster at {self.spec.address}" if self.spec.address else "start Ray"
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(f"cannot {what}: {reason}") from None
            self.started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.parallelism = max(1, cpus // self.cpus_per_task)
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()

    def run(self, work: Work, tasks: list) -> Iterator[Event]:
        remote = self.ray.remote(num_cpus=self.cpus_per_task)(_all_rows)
        pending = {remote.remote(work, task): task for task in tasks}
        while pending:
            (ref,), _ = self.ray.wait(list(pending), num_returns=1)
            task = pending.pop(ref)
            try:
                rows = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task raised, or its worker died past Ray's retries
                cause = getattr(exc, "cause", None)
                yield _failure(task, cause if isinstance(cause, BaseException) else exc)
                continue
            for row in rows:
                yield Event(task, row)


def open_executor(spec: ExecutorSpec | str | None, cpus_per_task: int = 1) -> Executor:
    """The executor for ``spec``; enter it (``with``) to start the pool or connect to Ray."""
    spec = spec if isinstance(spec, ExecutorSpec) else parse_executor(spec)
    return {"serial": SerialExecutor, "local": LocalExecutor, "ray": RayExecutor}[spec.kind](spec, cpus_per_task)
