"""Per-model training time: scikit-learn MLPClassifier one by one vs our ``mlp``.

Both train the paper's Adult model (10 ReLU units, Adam 1e-3, batch 200, L2 1e-4, tol 1e-4,
10 epochs without improvement) on the same D with K different seeds; prints seconds per model,
mean test accuracy of each, and the ratio, for our default trainer (the fused CPU kernel, jobs
in parallel threads) and the batched torch trainer; then the FLOP rate of the default trainer
against a large GEMM, and the wall time of ``subpop-bench run --suite paper-adult`` (warm caches, empty
store) with each ``--suite-defenses`` set. Run:

    SUBPOP_DATA_ROOT=../shared/data python benchmarks/bench_mlp.py --jobs 64 --sklearn-models 8

The measurements are taken in ``--rounds`` rounds, each timing scikit-learn, our trainers
and the GEMM back to back, and every ratio is reported per round and as the median over rounds:
on a shared virtual machine the speed drifts by tens of percent within minutes, so only ratios
of measurements taken close together in time are comparable.

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
from bench.models import TrainJob, fused, make


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
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of back-to-back measurements; ratios are reported per round "
                             "and as their median")
    args = parser.parse_args()
    if min(args.jobs, args.sklearn_models, args.processes, args.rounds) < 1:
        parser.error("--jobs, --sklearn-models, --processes and --rounds must be >= 1")

    adult = load("adult", seed=0, data_root=args.data_root)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"K = {args.jobs} batched jobs, {args.sklearn_models} scikit-learn models per round")
    speedups, rates = {}, []
    for r in range(args.rounds):
        print(f"round {r + 1}:")
        round_speedups, rate = measure_round(adult, args, seed0=r * max(args.jobs, args.sklearn_models))
        for label, ratio in round_speedups.items():
            speedups.setdefault(label, []).append(ratio)
        rates.append(rate)
    print(f"median over {args.rounds} rounds: speed-up per model "
          + ", ".join(f"{np.median(v):.1f}x ({label})" for label, v in speedups.items())
          + f"; trainer / GEMM rate {np.median(rates):.1%}")

    for chosen in filter(None, args.suite_defenses):
        print(f"paper-adult, --defense {chosen}, --executor {args.executor}: "
              f"{time_suite(chosen, args):.1f} s wall", flush=True)


def measure_round(adult, args, seed0: int) -> tuple[dict[int, float], float]:
    """One round: scikit-learn one by one, our default trainer (in one process and split over
    ``--processes``), the batched torch trainer and a large GEMM, back to back. Prints them;
    returns the speed-up per model of each trainer and process count, and the default trainer's
    FLOP rate as a fraction of the GEMM's."""
    from sklearn.neural_network import MLPClassifier

    X, y, Xt, yt = adult.train.X, adult.train.y, adult.test.X, adult.test.y
    seeds = range(seed0, seed0 + args.sklearn_models)
    t0 = time.perf_counter()
    sk_acc = [MLPClassifier((10,), max_iter=3000, random_state=s).fit(X, y).score(Xt, yt) for s in seeds]
    sk_time = (time.perf_counter() - t0) / args.sklearn_models

    seeds = range(seed0, seed0 + args.jobs)
    jobs = [TrainJob(np.ones(len(y)), s) for s in seeds]
    # The default recipe runs the fused CPU kernel where it can be built; the batched torch
    # trainer (backend="torch") is timed on the same jobs for comparison.
    default = "fused" if fused.supports((10,), 2) else "torch (no C++ compiler for the fused kernel)"
    timings, models = {}, {}
    for label, recipe in ((default, make("mlp")), ("torch, batched", make("mlp", backend="torch"))):
        t0 = time.perf_counter()
        models[label] = recipe.fit_many(X, y, 2, jobs)
        timings[f"{label}, 1 process"] = (time.perf_counter() - t0) / args.jobs
    ours = models[default]
    if args.processes > 1:
        timings[f"{default}, {args.processes} processes"] = split_over_processes(X, y, seeds, args.processes)

    # Useful arithmetic of a dense network, as scikit-learn computes it: per example and epoch,
    # forward 2*sum(in*out), weight gradients 2*sum(in*out), input gradients 2*sum(in*out) of
    # every layer but the first. The fused kernel skips zero inputs (a share of 1 - density of
    # the first layer's products), so this is a dense-equivalent rate for it.
    sizes = [X.shape[1], 10, 1]
    macs = [i * o for i, o in zip(sizes[:-1], sizes[1:])]
    per_example = 2 * sum(macs) * 2 + 2 * sum(macs[1:])
    flops = sum(m.n_epochs for m in ours) * len(y) * per_example
    best = min(v for k, v in timings.items() if k.startswith(default))
    trainer_rate = flops / (best * args.jobs)
    gemm_rate = large_gemm_rate()

    print(f"  scikit-learn MLPClassifier, sequential : {sk_time:7.3f} s/model, "
          f"accuracy {np.mean(sk_acc):.4f} (n={len(sk_acc)})")
    for label, seconds in timings.items():
        trained = models.get(label.rsplit(", ", 1)[0], ours)
        print(f"  subpop-bench mlp, K={args.jobs}, {label:<28s}: {seconds:7.3f} s/model, "
              f"accuracy {np.mean([(m.predict(Xt) == yt).mean() for m in trained]):.4f}, "
              f"epochs {np.mean([m.n_epochs for m in trained]):.0f}, speed-up per model {sk_time / seconds:.1f}x")
    print(f"  {default} trainer: {trainer_rate / 1e9:.2f} GFLOP/s dense-equivalent (inputs "
          f"{(X != 0).mean():.0%} non-zero); 2048x2048 float32 GEMM: {gemm_rate / 1e9:.1f} GFLOP/s; "
          f"ratio {trainer_rate / gemm_rate:.1%}", flush=True)
    return {label: sk_time / seconds for label, seconds in timings.items()}, trainer_rate / gemm_rate


def large_gemm_rate() -> float:
    """FLOP/s of a 2048 x 2048 float32 matrix product with torch's threads."""
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t0)


def _train_share(X, y, seeds, threads):
    torch.set_num_threads(threads)
    return [m.n_epochs for m in make("mlp").fit_many(X, y, 2, [TrainJob(np.ones(len(y)), s) for s in seeds])]


def split_over_processes(X, y, seeds, processes: int) -> float:
    """Seconds per model of the jobs with these ``seeds`` split into ``processes`` interleaved
    shares, each trained in its own spawned process (start-up excluded: the pool is warmed first)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_train_share, [X] * processes, [y] * processes, [[0]] * processes,
                      [threads] * processes))
        t0 = time.perf_counter()
        list(pool.map(_train_share, [X] * processes, [y] * processes,
                      [list(seeds)[p::processes] for p in range(processes)], [threads] * processes))
        return (time.perf_counter() - t0) / len(seeds)


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
