"""Where evaluations run: in this process, or on Ray workers (a local instance or a cluster).

An executor takes jobs with ``submit`` and hands back finished ones with ``poll``; each
finished job comes with an :class:`~optdisco.search.evaluator.Outcome` and a ``failure``:
``None`` (the evaluation ran, possibly with an error of the program's own), ``"died"`` (the
worker process died; the search may resubmit) or ``"timeout"`` (the evaluation ran past its
time limit and its worker was killed).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from .evaluator import Job, Outcome, run_job

# Seconds a Ray evaluation may run past its tier's time limit before its worker is killed: the
# evaluator stops itself at the limit, and a fresh worker first imports torch.
GRACE = 30.0


class ExecutorError(RuntimeError):
    """The executor could not start (no Ray cluster at the address given, say); one line."""


@dataclass
class Finished:
    job: Job
    outcome: Outcome
    failure: str | None = None


class LocalExecutor:
    """Runs each job in this process when polled, in submission order. For tests and tiny runs;
    it cannot stop a hung evaluation (the evaluator's own time limit applies)."""

    name = "local"

    def __init__(self, evaluator: Callable, workers: int = 1):
        self.evaluator = evaluator
        self.workers = 1
        self._queue: collections.deque[Job] = collections.deque()

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def in_flight(self) -> int:
        return len(self._queue)

    def poll(self, timeout: float | None = None) -> list[Finished]:
        if not self._queue:
            return []
        job = self._queue.popleft()
        return [Finished(job, run_job(job, self.evaluator))]

    def close(self) -> None:
        self._queue.clear()

    def describe(self) -> str:
        return "in-process"


def _ray_run(job: Job, evaluator, use_gpu: bool) -> Outcome:
    device = "cuda" if use_gpu else None
    return run_job(job, evaluator, device)


class RayExecutor:
    """Runs jobs as Ray tasks, ``workers`` at a time.

    Starts a local Ray instance with ``workers`` CPUs unless Ray is already initialised or an
    ``address`` is given (``"auto"`` or ``host:port`` of a running cluster). Each evaluation asks
    for one CPU, and for ``gpus_per_eval`` of a GPU when the cluster has GPUs (by default one
    evaluation per GPU at a time, on ``cuda``). Ray's own retries are off: the search decides
    what to resubmit and records every failure. A job that runs past its tier's time limit
    (plus a grace period) is cancelled with force, which kills its worker process.
    """

    name = "ray"

    def __init__(self, evaluator: Callable, workers: int = 2, address: str | None = None,
                 gpus_per_eval: float | None = None, grace: float = GRACE):
        import ray

        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if address:
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    raise ExecutorError(f"cannot join a Ray cluster at address {address!r}: {first}") from None
            else:
                # a local instance keeps Ray's token authentication on; its notice about that
                # would only interrupt the progress bar
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                ray.init(num_cpus=workers, **kwargs)
            self._started = True
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        if gpus_per_eval is None:
            gpus_per_eval = 1.0 if gpus > 0 else 0.0
        self.gpus_per_eval = gpus_per_eval if gpus > 0 else 0.0
        self.workers = workers
        self.grace = grace
        self._remote = ray.remote(_ray_run).options(
            num_cpus=1, num_gpus=self.gpus_per_eval, max_retries=0, retry_exceptions=False
        )
        self._evaluator_ref = ray.put(evaluator)
        self._refs: dict = {}  # ObjectRef -> (job, deadline)

    def submit(self, job: Job) -> None:
        ref = self._remote.remote(job, self._evaluator_ref, self.gpus_per_eval > 0)
        self._refs[ref] = (job, time.monotonic() + job.tier.time_limit + self.grace)

    def in_flight(self) -> int:
        return len(self._refs)

    def poll(self, timeout: float | None = None) -> list[Finished]:
        """Wait until at least one job finishes (or ``timeout`` seconds pass, or a deadline is
        reached) and return every finished job."""
        ray = self.ray
        if not self._refs:
            return []
        out: list[Finished] = []
        end = None if timeout is None else time.monotonic() + timeout
        while not out:
            now = time.monotonic()
            next_deadline = min(d for _, d in self._refs.values())
            wait_for = max(0.0, next_deadline - now)
            if end is not None:
                wait_for = min(wait_for, max(0.0, end - now))
            ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=wait_for)
            if ready:
                ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            for ref in ready:
                job, _ = self._refs.pop(ref)
                out.append(self._collect(ref, job))
            now = time.monotonic()
            for ref, (job, deadline) in list(self._refs.items()):
                if deadline <= now:
                    del self._refs[ref]
                    ray.cancel(ref, force=True)
                    limit = job.tier.time_limit
                    out.append(Finished(job, Outcome(float("inf"), None, f"timed out after {limit:g} s; worker killed"),
                                        "timeout"))
            if end is not None and time.monotonic() >= end:
                break
        return out

    def _collect(self, ref, job: Job) -> Finished:
        ray = self.ray
        try:
            outcome = ray.get(ref)
            return Finished(job, outcome)
        except ray.exceptions.TaskCancelledError:
            return Finished(job, Outcome(float("inf"), None, "cancelled"), "timeout")
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError, ray.exceptions.LocalRayletDiedError) as e:
            return Finished(job, Outcome(float("inf"), None, f"worker died: {type(e).__name__}"), "died")
        except ray.exceptions.RayError as e:  # any other system failure: treat as a dead worker
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return Finished(job, Outcome(float("inf"), None, f"{type(e).__name__}: {msg}"), "died")

    def close(self) -> None:
        for ref in list(self._refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        self._refs.clear()
        if self._started:
            self.ray.shutdown()

    def describe(self) -> str:
        res = self.ray.cluster_resources()
        gpu = f", {res.get('GPU', 0):g} GPUs" if res.get("GPU") else ""
        return f"Ray, {self.workers} workers ({res.get('CPU', 0):g} CPUs{gpu})"


def make_executor(kind: str, evaluator: Callable, workers: int, address: str | None = None,
                  gpus_per_eval: float | None = None):
    if kind == "local":
        return LocalExecutor(evaluator, workers)
    if kind == "ray":
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        return RayExecutor(evaluator, workers, address, gpus_per_eval)
    raise ValueError(f"unknown executor {kind!r}; use 'ray' or 'local'")
