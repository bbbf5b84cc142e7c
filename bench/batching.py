"""Dynamic batching of the model fits that defenses ask for.

Defenses are written for one trial: they call ``data.fit_recipe()`` whenever they need a model
(TRIM and SEVER several times). The runner runs the defenses of a chunk of trials in threads; a
thread that asks for a fit waits, and once every live thread is waiting or done, all waiting
requests are trained together in one batched ``fit_many``. Because a batch is formed only when
*every* live thread has made its next request, its content does not depend on thread timing, so
results are deterministic.

With a ``time_limit``, a task that runs past it is given up: its result becomes a
:class:`TrialTimeout`, it stops counting as live (the others' batches no longer wait for it), and
its next fit request raises so that it ends soon. Python cannot stop a thread, so a given-up task
that never asks for a fit runs on in the background (a daemon thread) until the process ends.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from bench.models import TrainJob

_TICK_S = 0.05  # how often the time limit is checked


class TrialTimeout(Exception):
    """A task given up after running past the time limit (returned in its place)."""


class _GivenUp(BaseException):
    """Raised in a given-up task at its next fit request. A BaseException, so that a defense's
    ``except Exception`` fallback does not keep it running."""


class FitBatcher:
    """Run ``tasks`` concurrently; their ``fit(jobs)`` calls are trained together over a pool.

    ``fit_many(jobs) -> models`` trains jobs over the shared pool (the recipe bound to it).
    ``time_limit`` (seconds, or None): how long one task may run. A task is charged the time
    it spends running its own code, never the batched fits; while more tasks run than there are
    CPU cores, they share the wall-clock time, so the limit means about the same for any chunk
    size.
    """

    def __init__(self, fit_many: Callable[[list[TrainJob]], list], time_limit: float | None = None):
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f"the time limit must be > 0 seconds, got {time_limit}")
        self._fit_many = fit_many
        self.time_limit = time_limit
        self._cond = threading.Condition()
        self._pending: list[tuple[int, list[TrainJob], dict]] = []
        self._active: set[int] = set()  # tasks running their own code (not waiting for a fit)
        self._unfinished: set[int] = set()  # tasks neither done nor given up
        self._given_up: set[tuple[int, int]] = set()  # (run number, task)
        self._run = 0  # run() calls so far: a task given up in one run stays given up
        self._used: list[float] = []  # seconds charged to each task
        self._clock = 0.0
        self._cores = os.cpu_count() or 1
        self.batches: list[int] = []  # jobs per batched call, for diagnostics

    def run(self, tasks: list[Callable]) -> list:
        """Call each ``task(fit)`` in its own thread; return their results in order (an exception
        a task raised, or a :class:`TrialTimeout`, is returned in its place)."""
        results: list = [None] * len(tasks)
        self._run += 1
        run = self._run
        self._active = set(range(len(tasks)))
        self._unfinished = set(range(len(tasks)))
        self._used = [0.0] * len(tasks)
        self._clock = time.monotonic()

        def body(i: int, task: Callable) -> None:
            try:
                result = task(lambda jobs: self._request(run, i, jobs))
            except BaseException as err:  # returned to the caller, which decides
                result = err
            with self._cond:
                if (run, i) in self._given_up:  # its slot holds the TrialTimeout already
                    return
                results[i] = result
                self._charge()
                self._active.discard(i)
                self._unfinished.discard(i)
                self._flush_if_all_waiting()
                self._cond.notify_all()

        threads = [threading.Thread(target=body, args=(i, t), daemon=True) for i, t in enumerate(tasks)]
        with _blas_limit(1):  # many threads of numpy code: one BLAS thread each
            for thread in threads:
                thread.start()
            with self._cond:
                while self._unfinished:
                    self._cond.wait(None if self.time_limit is None else _TICK_S)
                    if self.time_limit is not None:
                        self._give_up_late(results)
        return results

    def _request(self, run: int, task: int, jobs: list[TrainJob]) -> list:
        slot: dict = {}
        with self._cond:
            if (run, task) in self._given_up:
                raise _GivenUp
            self._charge()
            self._pending.append((task, list(jobs), slot))
            self._active.discard(task)
            self._flush_if_all_waiting()
            while not slot:
                self._cond.wait()
        if "error" in slot:
            raise slot["error"]
        return slot["models"]

    def _charge(self) -> None:
        # Called with the lock held, at every change of the active set: the time since the last
        # change is shared by the tasks that were active, at most one core's worth each.
        now = time.monotonic()
        if self._active:
            share = (now - self._clock) * min(1.0, self._cores / len(self._active))
            for task in self._active:
                self._used[task] += share
        self._clock = now

    def _give_up_late(self, results: list) -> None:
        # Called with the lock held, by the thread that called run().
        self._charge()
        late = sorted(t for t in self._active if self._used[t] > self.time_limit)
        for task in late:
            results[task] = TrialTimeout(f"timed out after {self.time_limit:g} s")
            self._active.discard(task)
            self._unfinished.discard(task)
            self._given_up.add((self._run, task))
        if late:
            self._flush_if_all_waiting()

    def _flush_if_all_waiting(self) -> None:
        # Called with the lock held: all other threads are blocked, so training here is safe.
        if self._active or not self._pending:
            return
        batch = sorted(self._pending, key=lambda p: p[0])
        self._pending = []
        jobs = [job for _, js, _ in batch for job in js]
        self.batches.append(len(jobs))
        with _blas_limit(os.cpu_count() or 1):
            try:
                models = self._fit_many(jobs)
            except Exception:
                # One bad request (say, weights that select nothing) must not fail the others,
                # whose outcome would then depend on which requests shared their batch: train
                # each request alone, so that only the bad one fails.
                for _, js, slot in batch:
                    try:
                        slot["models"] = self._fit_many(js)
                    except Exception as err:
                        slot["error"] = err
            else:
                start = 0
                for _, js, slot in batch:
                    slot["models"] = models[start:start + len(js)]
                    start += len(js)
        self._charge()  # nothing was active: the fit's time is charged to no task
        self._active.update(task for task, _, _ in batch)
        self._cond.notify_all()


def _blas_limit(n: int):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")
