"""The ``subpop-bench`` command line."""
from __future__ import annotations

import argparse
import sys
import time

from bench.registry import UnknownNameError
from bench.store import DEFAULT_STORE

LISTABLE = ("datasets", "models", "finders", "attacks", "defenses", "scenarios", "suites")


def _registries():
    import attacks
    import defenses
    from bench.datasets import DATASETS
    from bench.models import MODELS
    from bench.scenarios import SCENARIOS, SUITES
    from bench.subpops import FINDERS

    return {"datasets": DATASETS, "models": MODELS, "finders": FINDERS, "attacks": attacks.ATTACKS,
            "defenses": defenses.DEFENSES, "scenarios": SCENARIOS, "suites": SUITES}


def _doc(obj) -> str:
    if isinstance(obj, tuple):  # a suite: its scenario ids
        return ", ".join(obj)
    if hasattr(obj, "id"):  # a scenario spec
        return f"alphas {', '.join(f'{a:g}' for a in obj.alphas)}; {obj.trials} trial(s)"
    paragraph = " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subpop-bench",
        description="Benchmark defenses against subpopulation data poisoning. With no command, "
                    "runs the offline 'quick' suite with every defense and prints the leaderboard.")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run scenarios and store every trial (skips stored trials)")
    run.add_argument("--suite", help="suite to run (default: quick, unless --scenario is given)")
    run.add_argument("--scenario", action="append", default=[], metavar="ID",
                     help="scenario id to run (repeatable); see `subpop-bench list scenarios`")
    run.add_argument("--defense", action="append", default=[], metavar="NAME",
                     help="defense to run (repeatable; default: every registered defense)")
    run.add_argument("--alpha", action="append", type=float, default=[], metavar="A",
                     help="only this poison rate of each scenario (repeatable; default: all)")
    run.add_argument("--track", choices=("informed", "blind", "both"), default="both",
                     help="budget track: informed (told the poison count), blind, or both (default)")
    _common(run)
    run.add_argument("--chunk-size", type=int, default=64, metavar="N",
                     help="trials trained together in one batch (default 64)")
    run.add_argument("--executor", choices=("sequential", "process", "ray"), default="sequential",
                     help="where chunks run: this process (default), a local process pool, or Ray")
    run.add_argument("--workers", type=int, default=2, metavar="N",
                     help="processes for --executor process (default 2); CPUs of a local Ray cluster")
    run.add_argument("--address", metavar="A",
                     help="Ray cluster address for --executor ray (default: start a local cluster)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    board = sub.add_parser("leaderboard", help="print the leaderboard of a result store")
    board.add_argument("--store", default=str(DEFAULT_STORE), help=f"result store (default {DEFAULT_STORE})")
    board.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    board.add_argument("--scenario", action="append", default=[], metavar="ID", help="only these scenarios")

    listing = sub.add_parser("list", help="list registered names")
    listing.add_argument("what", choices=LISTABLE)

    data = sub.add_parser("data", help="manage datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download a dataset's official files into the user cache")
    fetch.add_argument("name", choices=("adult",))

    repro = sub.add_parser("reproduce", help="run a suite without defense and print the paper's "
                                             "Table 2 shape (worst-10/5/1 target damage per alpha)")
    repro.add_argument("--suite", default="paper-adult")
    _common(repro)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", metavar="PATH",
                   help="folder holding the datasets (default: $SUBPOP_DATA_ROOT, else the user cache)")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="PATH",
                   help=f"SQLite result store (default {DEFAULT_STORE})")


def _specs(suite: str | None, scenario_ids: list[str]):
    from bench.scenarios import SCENARIOS, SUITES

    ids = list(scenario_ids)
    if suite or not ids:
        ids = list(SUITES.get(suite or "quick")) + ids
    return [SCENARIOS.get(i) for i in dict.fromkeys(ids)]


def cmd_run(args) -> int:
    import defenses
    from bench import executors
    from bench.runner import run
    from bench.store import Store
    from leaderboard import aggregate, render

    specs = _specs(args.suite, args.scenario)
    offered = {a for spec in specs for a in spec.alphas}
    unknown = [a for a in args.alpha if a not in offered]
    if unknown:
        raise ValueError(f"--alpha {unknown[0]:g} is not a poison rate of the chosen scenarios "
                         f"(they have {', '.join(f'{a:g}' for a in sorted(offered))})")
    names = args.defense or defenses.DEFENSES.names()
    chosen = [defenses.make(n) for n in names]
    tracks = ("informed", "blind") if args.track == "both" else (args.track,)
    with Store(args.store) as store:
        executor = executors.make(args.executor, args.workers, args.address)
        summary = run(specs, chosen, tracks, store, args.data_root, chunk_size=args.chunk_size,
                      progress=not args.no_progress, executor=executor,
                      alphas=tuple(args.alpha) or None)
        print(f"ran {summary.ran} trials ({summary.failed} failed), skipped {summary.skipped} "
              f"already stored, in {summary.seconds:.1f} s; store: {args.store}", file=sys.stderr)
        rows = [r for r in store.rows() if r["scenario"] in summary.scenarios and r["defense"] in names]
    print(render(aggregate(rows), "markdown"))
    return 0


def cmd_leaderboard(args) -> int:
    from pathlib import Path

    from bench.store import Store
    from leaderboard import aggregate, render

    if not Path(args.store).exists():
        print(f"error: no result store at {args.store}; run `subpop-bench run` first "
              f"or pass --store", file=sys.stderr)
        return 2
    with Store(args.store) as store:
        rows = store.rows()
    if args.scenario:
        rows = [r for r in rows if r["scenario"] in args.scenario]
    text = render(aggregate(rows), args.format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_reproduce(args) -> int:
    import defenses
    from bench.runner import run
    from bench.store import Store
    from leaderboard.paper import table2

    specs = _specs(args.suite, [])
    start = time.time()
    with Store(args.store) as store:
        run(specs, [defenses.make("none")], ("blind",), store, args.data_root)
        rows = [r for r in store.rows() if r["scenario"] in {s.id for s in specs} and r["defense"] == "none"]
    print(table2(rows))
    print(f"\n(wall time of this command: {time.time() - start:.0f} s)")
    return 0


def cmd_list(args) -> int:
    registry = _registries()[args.what]
    if args.what == "defenses":
        return _list_defenses(registry)
    for name in registry.names():
        print(f"{name:45s} {_doc(registry.get(name))}")
    return 0


def _list_defenses(registry) -> int:
    from tabulate import tabulate

    rows = []
    for name in registry.names():
        cls = registry.get(name)
        params = ", ".join(f"{k}={v!r}" for k, v in cls().hyperparameters().items()) or "-"
        tracks = "informed, blind" if cls.uses_budget else "any (ignores the hint)"
        kind = "robust training" if hasattr(cls, "fit") else "sanitizer"
        doc = _doc(cls)
        rows.append([name, kind, params, tracks, "yes (oracle)" if cls.needs_trusted else "no",
                     doc if len(doc) <= 70 else doc[:69] + "…"])
    print(tabulate(rows, headers=["defense", "kind", "hyper-parameters", "tracks", "trusted data",
                                  "what it does"], tablefmt="simple"))
    return 0


def cmd_data(args) -> int:
    from bench.datasets import adult

    path = adult.fetch()
    print(f"adult: official files verified in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from bench.datasets import DataError
    from bench.store import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *([] if argv is None else argv)])
    handlers = {"run": cmd_run, "leaderboard": cmd_leaderboard, "list": cmd_list,
                "data": cmd_data, "reproduce": cmd_reproduce}
    try:
        return handlers[args.command](args)
    except (UnknownNameError, DataError, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are stored; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
