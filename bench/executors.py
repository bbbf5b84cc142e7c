"""Where chunks of trials run: in this process, in a local process pool, or on a Ray cluster.

A work unit (one chunk of one scenario, defense and track) is a small picklable value; a worker
prepares the scenario once (splits, subpopulations, clean models; cached per process) and
returns the rows; only the driver writes the store. Seeds derive from the trial ids, so every
executor stores the same numbers.
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterable, Iterator

from bench.scenarios import ScenarioSpec

EXECUTORS = ("sequential", "process", "ray")
_SCENARIOS: dict = {}  # per process: (spec, data_root) -> prepared Scenario


@dataclass(frozen=True)
class WorkUnit:
    spec: ScenarioSpec
    defense: object
    track: str
    trials: tuple[tuple[int, float, int], ...]
    data_root: str | None
    env: str
    trial_timeout: float | None = None  # seconds a trial's defense may run (None: no limit)


def scenario(spec: ScenarioSpec, data_root=None):
    """The prepared :class:`bench.runner.Scenario` of ``spec``, cached in this process."""
    from bench.runner import Scenario

    key = (spec, None if data_root is None else str(data_root))
    if key not in _SCENARIOS:
        _SCENARIOS[key] = Scenario.prepare(spec, data_root)
    return _SCENARIOS[key]


def run_unit(unit: WorkUnit) -> list:
    from bench.runner import run_chunk

    sc = scenario(unit.spec, unit.data_root)
    return run_chunk(sc, unit.defense, unit.track, list(unit.trials), unit.env, unit.trial_timeout)


class Sequential:
    """Runs units one after the other in this process."""

    def map(self, units: Iterable[WorkUnit]) -> Iterator[list]:
        for unit in units:
            yield run_unit(unit)

    def close(self) -> None:
        pass


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Process:
    """A local pool of ``workers`` processes (spawned, so no thread state is forked); each uses
    ``cpu_count // workers`` torch threads so the pool does not oversubscribe the cores."""

    def __init__(self, workers: int):
        import multiprocessing

        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(threads,))
        self.workers = workers

    def map(self, units: Iterable[WorkUnit]) -> Iterator[list]:
        pending = set()
        queue = iter(units)
        # Keep twice as many units in flight as workers: enough to stay busy, few enough that an
        # interrupted run has little unstored work.
        for unit in queue:
            pending.add(self.pool.submit(run_unit, unit))
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(self.pool.submit(run_unit, nxt))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Ray:
    """Units as Ray tasks: on the cluster at ``address``, or a local one started here."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError as err:
            raise ValueError("--executor ray needs Ray: pip install 'subpop-bench[ray]'") from err
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else (workers or os.cpu_count()),
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        self.remote = ray.remote(run_unit)

    def map(self, units: Iterable[WorkUnit]) -> Iterator[list]:
        pending = [self.remote.remote(unit) for unit in units]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])

    def close(self) -> None:
        pass


def make(name: str = "sequential", workers: int = 2, address: str | None = None):
    if name == "sequential":
        return Sequential()
    if name == "process":
        return Process(workers)
    if name == "ray":
        return Ray(address, workers)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
