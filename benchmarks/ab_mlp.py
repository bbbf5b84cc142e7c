"""Paired before/after timing of the MLP trainers, in one process.

Trains K jobs of the paper's Adult model (K seeds on D) with each variant in turn, alternating
their order, and prints milliseconds per job and epoch for every round and the median of the
per-round ratios. On a shared virtual machine whose speed drifts by tens of percent within
minutes, only such paired measurements show a change of a few percent.

    # the trainer of a git revision against the working tree's, 5 epochs per job
    SUBPOP_DATA_ROOT=../shared/data python benchmarks/ab_mlp.py --base 4db0ff3 --epochs 5
    # whole trainings (early stopping) of the batched torch trainer in chunks of 64 and of 256 jobs
    SUBPOP_DATA_ROOT=../shared/data python benchmarks/ab_mlp.py --chunk-sizes 64 256 --jobs 256 --rounds 2
    # the batched torch trainer against the default (the fused CPU kernel where it builds)
    SUBPOP_DATA_ROOT=../shared/data python benchmarks/ab_mlp.py --backends torch auto

A fixed number of epochs (early stopping off, so every variant does the same work) isolates the
cost of an epoch, but it also counts each chunk's set-up once per few epochs: compare chunk sizes
on whole trainings.

``--base`` loads that revision's ``bench/models/mlp.py`` beside the current one (it must import
only what the current ``bench.models`` still provides).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

import bench.models.mlp as current
from bench.datasets import load
from bench.models import TrainJob

REPO = Path(__file__).resolve().parents[1]


def trainer_at(revision: str) -> types.ModuleType:
    """The module ``bench/models/mlp.py`` as it was at ``revision``, without its registrations."""
    shown = subprocess.run(["git", "show", f"{revision}:bench/models/mlp.py"], cwd=REPO,
                           capture_output=True, text=True)
    if shown.returncode:
        raise SystemExit(f"--base {revision}: git cannot show bench/models/mlp.py there: {shown.stderr.strip()}")
    source = shown.stdout
    module = types.ModuleType(f"mlp_at_{revision}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source.split("\nMODELS.")[0], f"{revision}:bench/models/mlp.py", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--base", metavar="REV", help="git revision whose trainer to compare with the working tree's")
    which.add_argument("--chunk-sizes", type=int, nargs=2, metavar=("A", "B"),
                       help="compare the working tree's batched torch trainer at these two chunk sizes")
    which.add_argument("--backends", nargs=2, metavar=("A", "B"), choices=("auto", "torch"),
                       help="compare the working tree's trainer with these two MLP backends")
    parser.add_argument("--jobs", type=int, default=64, help="K, jobs trained per variant and round")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per job, early stopping off (default: whole trainings)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the fused trainer runs as many jobs at once)")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    if min(args.jobs, 1 if args.epochs is None else args.epochs, args.rounds, args.threads) < 1:
        parser.error("--jobs, --epochs, --rounds and --threads must be >= 1")
    if args.chunk_sizes and min(args.chunk_sizes) < 1:
        parser.error("--chunk-sizes must be >= 1")
    torch.set_num_threads(args.threads)

    if args.base:
        variants = {args.base: (trainer_at(args.base), {}), "working tree": (current, {})}
    elif args.backends:
        if args.backends[0] == args.backends[1]:
            parser.error("--backends needs two different backends")
        variants = {b: (current, {"backend": b}) for b in args.backends}
    else:
        # chunk_visits out of the way, so that chunk_size alone sets the chunks
        variants = {f"chunk {c}": (current, {"chunk_size": c, "chunk_visits": 2 ** 62, "backend": "torch"})
                    for c in args.chunk_sizes}
    fixed = {} if args.epochs is None else {"max_epochs": args.epochs, "n_iter_no_change": 10 ** 6}
    adult = load("adult", seed=0, data_root=args.data_root)
    X, y = adult.train.X, adult.train.y
    jobs = [TrainJob(np.ones(len(y)), s) for s in range(args.jobs)]
    ms = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in list(variants)[::1 if r % 2 == 0 else -1]:
            module, params = variants[name]
            t0 = time.perf_counter()
            models = module.MLP(**fixed, **params).fit_many(X, y, 2, jobs)
            ms[name].append((time.perf_counter() - t0) * 1e3 / sum(m.n_epochs for m in models))
    first, second = (np.array(v) for v in ms.values())
    length = "whole trainings" if args.epochs is None else f"{args.epochs} epochs"
    print(f"Adult, K = {args.jobs}, {length}, {args.threads} thread(s); "
          f"ms per job and epoch in {args.rounds} rounds:")
    for name, values in ms.items():
        print(f"  {name:>14}: median {np.median(values):.3f}  [{' '.join(f'{v:.3f}' for v in values)}]")
    print(f"median per-round ratio {list(ms)[0]} / {list(ms)[1]}: {np.median(first / second):.3f}")


if __name__ == "__main__":
    main()
