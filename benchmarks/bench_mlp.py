"""Per-model training time: scikit-learn MLPClassifier one by one vs our batched ``mlp``.

Both train the paper's Adult model (10 ReLU units, Adam 1e-3, batch 200, L2 1e-4, tol 1e-4,
10 epochs without improvement) on the same D with K different seeds; prints seconds per model,
mean test accuracy of each, and the ratio; then the FLOP rate of the batched trainer against a
large GEMM measured in the same run, and the wall time of ``subpop-bench run --suite paper-adult``
(warm caches, empty store) with each ``--suite-defenses`` set. Run:

    SUBPOP_DATA_ROOT=../shared/data python benchmarks/bench_mlp.py --jobs 64 --sklearn-models 8

``--suite-defenses all`` times every registered defense (hours on a 2-core machine);
``--suite-defenses ''`` skips the suite runs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from bench.datasets import load
from bench.models import TrainJob, make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64, help="K, models trained by our batched trainer")
    parser.add_argument("--sklearn-models", type=int, default=8,
                        help="models trained one by one with scikit-learn (its time is per model)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--suite-defenses", nargs="*", default=["none"], metavar="SET",
                        help="defense sets to time paper-adult with: comma-separated names, or 'all' "
                             "(default: none)")
    parser.add_argument("--processes", type=int, default=1,
                        help="also time the K jobs split over this many processes (cpu_count / P "
                             "torch threads each), as --executor process trains chunks")
    parser.add_argument("--executor", default="sequential", help="executor of the suite runs")
    parser.add_argument("--workers", type=int, default=2, help="workers of --executor process")
    args = parser.parse_args()
    from sklearn.neural_network import MLPClassifier

    adult = load("adult", seed=0, data_root=args.data_root)
    X, y, Xt, yt = adult.train.X, adult.train.y, adult.test.X, adult.test.y

    t0 = time.perf_counter()
    sk_acc = [MLPClassifier((10,), max_iter=3000, random_state=s).fit(X, y).score(Xt, yt)
              for s in range(args.sklearn_models)]
    sk_time = (time.perf_counter() - t0) / args.sklearn_models

    t0 = time.perf_counter()
    ours = make("mlp").fit_many(X, y, 2, [TrainJob(np.ones(len(y)), s) for s in range(args.jobs)])
    our_time = (time.perf_counter() - t0) / args.jobs
    our_acc = [(m.predict(Xt) == yt).mean() for m in ours]

    timings = {1: our_time}
    if args.processes > 1:
        timings[args.processes] = split_over_processes(X, y, args.jobs, args.processes)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"scikit-learn MLPClassifier, sequential : {sk_time:7.3f} s/model, "
          f"accuracy {np.mean(sk_acc):.4f} (n={len(sk_acc)})")
    print(f"subpop-bench mlp, batched K={args.jobs:<4d}    : {our_time:7.3f} s/model, "
          f"accuracy {np.mean(our_acc):.4f}, epochs {np.mean([m.n_epochs for m in ours]):.0f}")
    print(f"speed-up per model: {sk_time / our_time:.1f}x")
    for procs, seconds in list(timings.items())[1:]:
        print(f"subpop-bench mlp, K={args.jobs} over {procs} processes: {seconds:7.3f} s/model, "
              f"speed-up per model {sk_time / seconds:.1f}x")

    # Useful arithmetic of the batched trainer: per example and epoch, forward 2*sum(in*out),
    # weight gradients 2*sum(in*out), input gradients 2*sum(in*out) of every layer but the first.
    sizes = [X.shape[1], 10, 1]
    macs = [i * o for i, o in zip(sizes[:-1], sizes[1:])]
    per_example = 2 * sum(macs) * 2 + 2 * sum(macs[1:])
    flops = sum(m.n_epochs for m in ours) * len(y) * per_example
    trainer_rate = flops / (min(timings.values()) * args.jobs)
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    gemm_rate = 5 * 2 * 2048 ** 3 / (time.perf_counter() - t0)
    print(f"batched trainer: {trainer_rate / 1e9:.2f} GFLOP/s; 2048x2048 float32 GEMM: "
          f"{gemm_rate / 1e9:.1f} GFLOP/s; ratio {trainer_rate / gemm_rate:.1%}")

    for chosen in filter(None, args.suite_defenses):
        print(f"paper-adult, --defense {chosen}, --executor {args.executor}: "
              f"{time_suite(chosen, args):.1f} s wall", flush=True)


def _train_share(X, y, seeds, threads):
    torch.set_num_threads(threads)
    return [m.n_epochs for m in make("mlp").fit_many(X, y, 2, [TrainJob(np.ones(len(y)), s) for s in seeds])]


def split_over_processes(X, y, jobs: int, processes: int) -> float:
    """Seconds per model of the same K jobs split into ``processes`` interleaved shares, each
    trained in its own spawned process (start-up excluded: the pool is warmed first)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_train_share, [X] * processes, [y] * processes, [[0]] * processes,
                      [threads] * processes))
        t0 = time.perf_counter()
        list(pool.map(_train_share, [X] * processes, [y] * processes,
                      [list(range(p, jobs, processes)) for p in range(processes)], [threads] * processes))
        return (time.perf_counter() - t0) / jobs


def time_suite(chosen: str, args) -> float:
    """Wall seconds of the paper-adult suite with the defenses ``chosen`` (comma-separated or
    'all'), in a subprocess as a user runs it, into an empty store."""
    picked = [] if chosen == "all" else [a for name in chosen.split(",") for a in ("--defense", name)]
    env = {**os.environ, **({"SUBPOP_DATA_ROOT": args.data_root} if args.data_root else {})}
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "bench", "run", "--suite", "paper-adult", *picked,
                   "--store", os.path.join(tmp, "s.sqlite"), "--no-progress",
                   "--executor", args.executor, "--workers", str(args.workers)]
        t0 = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


if __name__ == "__main__":
    main()
