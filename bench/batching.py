"""Dynamic batching of the model fits that defenses ask for.

Defenses are written for one trial: they call ``data.fit_recipe()`` whenever they need a model
(TRIM and SEVER several times). The runner runs the defenses of a chunk of trials in threads; a
thread that asks for a fit waits, and once every live thread is waiting or done, all waiting
requests are trained together in one batched ``fit_many``. Because a batch is formed only when
*every* live thread has made its next request, its content does not depend on thread timing, so
results are deterministic.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

from bench.models import TrainJob


class FitBatcher:
    """Run ``tasks`` concurrently; their ``fit(jobs)`` calls are trained together over a pool.

    ``fit_many(jobs) -> models`` trains jobs over the shared pool (the recipe bound to it).
    """

    def __init__(self, fit_many: Callable[[list[TrainJob]], list]):
        self._fit_many = fit_many
        self._cond = threading.Condition()
        self._pending: list[tuple[int, list[TrainJob], dict]] = []
        self._running = 0
        self.batches: list[int] = []  # jobs per batched call, for diagnostics

    def run(self, tasks: list[Callable]) -> list:
        """Call each ``task(fit)`` in its own thread; return their results in order (an exception
        a task raised is returned in its place)."""
        results: list = [None] * len(tasks)
        self._running = len(tasks)

        def body(i: int, task: Callable) -> None:
            try:
                results[i] = task(lambda jobs: self._request(i, jobs))
            except BaseException as err:  # returned to the caller, which decides
                results[i] = err
            finally:
                with self._cond:
                    self._running -= 1
                    self._flush_if_all_waiting()

        threads = [threading.Thread(target=body, args=(i, t), daemon=True) for i, t in enumerate(tasks)]
        with _blas_limit(1):  # many threads of numpy code: one BLAS thread each
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        return results

    def _request(self, task: int, jobs: list[TrainJob]) -> list:
        slot: dict = {}
        with self._cond:
            self._pending.append((task, list(jobs), slot))
            self._running -= 1
            self._flush_if_all_waiting()
            while not slot:
                self._cond.wait()
        if "error" in slot:
            raise slot["error"]
        return slot["models"]

    def _flush_if_all_waiting(self) -> None:
        # Called with the lock held: all other threads are blocked, so training here is safe.
        if self._running > 0 or not self._pending:
            return
        batch = sorted(self._pending, key=lambda p: p[0])
        self._pending = []
        jobs = [job for _, js, _ in batch for job in js]
        self.batches.append(len(jobs))
        try:
            with _blas_limit(os.cpu_count() or 1):
                models = self._fit_many(jobs)
        except Exception as err:
            for _, _, slot in batch:
                slot["error"] = err
        else:
            start = 0
            for _, js, slot in batch:
                slot["models"] = models[start:start + len(js)]
                start += len(js)
        self._running += len(batch)
        self._cond.notify_all()


def _blas_limit(n: int):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")
