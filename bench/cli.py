"""The ``subpop-bench`` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time

from bench.registry import UnknownNameError
from bench.store import DEFAULT_STORE

LISTABLE = ("datasets", "models", "finders", "attacks", "defenses", "scenarios", "suites")
_LISTED_PROBLEMS = 20  # problems `store check` prints before "... and N more"


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
    run.add_argument("--trial-timeout", type=_seconds, metavar="S",
                     help="fail a trial whose defense runs longer than S seconds, and go on "
                          "(default: no limit; docs/reliability.md)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    board = sub.add_parser(
        "leaderboard", help="print the leaderboard of a result store, or build the site",
        description="Print the leaderboard of a result store (markdown, csv or json), or write it "
                    "as a static site (--format html --out DIR). `leaderboard build` builds the "
                    "site from a folder of result bundles instead.")
    board.add_argument("--store", default=str(DEFAULT_STORE), help=f"result store (default {DEFAULT_STORE})")
    board.add_argument("--format", choices=("markdown", "csv", "json", "html"), default="markdown",
                       help="markdown (default), csv, json, or html: a static site written to --out")
    board.add_argument("--scenario", action="append", default=[], metavar="ID", help="only these scenarios")
    board.add_argument("--out", metavar="DIR", help="folder of the site, for --format html")
    board_sub = board.add_subparsers(dest="board_command", metavar="{build}", title="sub-command",
                                     description="none: print the leaderboard of --store")
    build = board_sub.add_parser(
        "build", help="build the site from a folder of result bundles",
        description="Validate every *.json result bundle in --bundles (see docs/submitting.md), "
                    "print each rejected bundle with its reason, and build the site from the "
                    "accepted ones. Exits with status 1 when a bundle was rejected (the site is "
                    "still built from the others), 2 when none was accepted.")
    build.add_argument("--bundles", required=True, metavar="DIR", help="folder of result bundles")
    build.add_argument("--out", required=True, metavar="DIR", help="folder to write the site into")
    _data_root(build, "to prepare the bundles' scenarios")

    submit = sub.add_parser(
        "submit", help="write a defense's stored trials as a result bundle for the leaderboard",
        description="Write the trials of one defense (its registered version and default "
                    "hyper-parameters) from a result store as a JSON result bundle, after "
                    "checking it as the maintainers will (docs/submitting.md).")
    submit.add_argument("--defense", required=True, metavar="NAME", help="the defense to submit")
    submit.add_argument("--out", required=True, metavar="PATH", help="bundle file to write (.json)")
    _common(submit)

    report = sub.add_parser(
        "report", help="print a markdown report of a result store, e.g. for a pull request",
        description="Print what ran, the leaderboard and, with --baseline, each defense's change "
                    "in target damage and clean cost against a result bundle, as markdown "
                    "(append it to $GITHUB_STEP_SUMMARY in a GitHub workflow).")
    report.add_argument("--baseline", action="append", default=[], metavar="BUNDLE",
                        help="result bundle to compare with (repeatable, e.g. one per defense)")
    report.add_argument("--tolerance", type=float, default=None, metavar="T",
                        help="changes within ±T count as equal (default 0.01)")
    _common(report)

    store = sub.add_parser("store", help="inspect a result store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    check = store_sub.add_parser(
        "check", help="verify a result store's integrity",
        description="Verify a result store: SQLite's integrity check, its schema version and "
                    "columns, and every trial row (JSON that decodes, a key that its fields give, "
                    "no trial twice, a status consistent with its error). Exits with status 1 "
                    "when a problem is found.")
    check.add_argument("--store", default=str(DEFAULT_STORE), metavar="PATH",
                       help=f"SQLite result store (default {DEFAULT_STORE})")

    listing = sub.add_parser("list", help="list registered names")
    listing.add_argument("what", choices=LISTABLE)

    data = sub.add_parser("data", help="manage datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download a dataset's official files into the user cache")
    fetch.add_argument("name", choices=("adult", "cifar10"))
    about = ("pretrain the offline image backbone (cifar10-conv-ll) on CIFAR-10 into the user cache; "
             "the recipe does this on first use, this does it ahead of time")
    backbone = data_sub.add_parser("backbone", help=about, description=about)
    from bench.models.pretrain import Backbone

    for field, what in (("width", "network width (the paper's conv: 32)"),
                        ("images", "CIFAR-10 training images, class-stratified"),
                        ("epochs", "passes over them"), ("seed", "seed of the subset, order and init"),
                        ("batch_size", "minibatch size")):
        default = getattr(Backbone, field)
        backbone.add_argument(f"--{field.replace('_', '-')}", type=int, default=default,
                              help=f"{what} (default {default})")
    backbone.add_argument("--lr", type=float, default=Backbone.lr, help=f"Adam learning rate (default {Backbone.lr:g})")
    backbone.add_argument("--data-root", metavar="PATH",
                          help="folder holding cifar10/ (default: $SUBPOP_DATA_ROOT, else the user cache)")

    repro = sub.add_parser("reproduce", help="run a suite without defense and print the paper's "
                                             "Table 2 shape (worst-10/5/1 target damage per alpha), and label-flip "
                                             "against the other attacks of the same setting")
    repro.add_argument("--suite", help="suite to run (default: paper-adult, unless --scenario is given)")
    repro.add_argument("--scenario", action="append", default=[], metavar="ID",
                       help="scenario id to run (repeatable)")
    _common(repro)
    return parser


def _seconds(text: str) -> float:
    """A positive number of seconds (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _data_root(p: argparse.ArgumentParser, purpose: str = "") -> None:
    p.add_argument("--data-root", metavar="PATH",
                   help=f"folder holding the datasets{' ' + purpose if purpose else ''} "
                        f"(default: $SUBPOP_DATA_ROOT, else the user cache)")


def _common(p: argparse.ArgumentParser) -> None:
    _data_root(p)
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
    chosen = [defenses.make(n) for n in args.defense or defenses.DEFENSES.names()]
    names = [d.name for d in chosen]
    from_files = [n for n in args.defense if n.partition(":")[0].endswith(".py")]
    if from_files and args.executor != "sequential":
        raise ValueError(f"--defense {from_files[0]} is a file, which worker processes cannot import; "
                         "package it with an entry point (docs/submitting.md) or use --executor sequential")
    tracks = ("informed", "blind") if args.track == "both" else (args.track,)
    with Store(args.store) as store:
        executor = executors.make(args.executor, args.workers, args.address)
        summary = run(specs, chosen, tracks, store, args.data_root, chunk_size=args.chunk_size,
                      progress=not args.no_progress, executor=executor,
                      alphas=tuple(args.alpha) or None, trial_timeout=args.trial_timeout)
        print(f"ran {summary.ran} trials ({summary.failed} failed), skipped {summary.skipped} "
              f"already stored, in {summary.seconds:.1f} s; store: {args.store}", file=sys.stderr)
        rows = [r for r in store.rows() if r["scenario"] in summary.scenarios and r["defense"] in names]
    print(render(aggregate(rows), "markdown"))
    return 0


def _no_store(path: str) -> bool:
    """True (after saying so) when there is no result store at ``path``."""
    from pathlib import Path

    if Path(path).exists():
        return False
    print(f"error: no result store at {path}; run `subpop-bench run` first or pass --store",
          file=sys.stderr)
    return True


def cmd_leaderboard(args) -> int:
    from bench.store import Store
    from leaderboard import aggregate, render

    if args.board_command == "build":
        return _build_site(args)
    if (args.format == "html") != (args.out is not None):
        raise ValueError("--format html writes a site and needs --out DIR; --out is only for "
                         "--format html")
    if _no_store(args.store):
        return 2
    with Store(args.store) as store:
        rows = store.rows()
    if args.scenario:
        rows = [r for r in rows if r["scenario"] in args.scenario]
    if args.format == "html":
        from leaderboard import site

        print(site.build(rows, args.out))
        return 0
    text = render(aggregate(rows), args.format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _build_site(args) -> int:
    from leaderboard import bundle, site

    accepted, rejected = bundle.load_bundles(args.bundles, args.data_root)
    for path, reason in rejected:
        print(f"rejected {path}: {reason}", file=sys.stderr)
    if not accepted:
        print(f"error: no valid result bundle in {args.bundles}", file=sys.stderr)
        return 2
    rows = [row for b in accepted for row in bundle.to_rows(b)]
    print(f"{len(accepted)} bundle(s) accepted, {len(rejected)} rejected", file=sys.stderr)
    print(site.build(rows, args.out))
    return 1 if rejected else 0


def cmd_submit(args) -> int:
    from pathlib import Path

    import defenses
    from bench.store import Store
    from leaderboard import bundle

    if _no_store(args.store):
        return 2
    defense = defenses.make(args.defense)
    with Store(args.store) as store:
        made = bundle.create(store.rows(), defense)
    text = bundle.dumps(made)
    try:  # the maintainers' checks, on the exact text, before anything is written
        bundle.validate(text, args.data_root)
    except bundle.BundleError as err:
        raise ValueError(f"the bundle would be rejected: {err}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}: {defense.name} version {defense.version}, {len(made['trials'])} trials of "
          f"{len(made['scenarios'])} scenario(s)", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from bench.store import Store
    from leaderboard import bundle
    from leaderboard.report import TOLERANCE, report

    if args.tolerance is not None and not args.tolerance >= 0:
        raise ValueError(f"--tolerance must be >= 0, got {args.tolerance:g}")
    if _no_store(args.store):
        return 2
    baselines = [bundle.load(path, args.data_root) for path in args.baseline]
    with Store(args.store) as store:
        rows = store.rows()
    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    sys.stdout.write(report(rows, baselines, tolerance))
    return 0


def cmd_store(args) -> int:
    import sqlite3

    from bench.store import SCHEMA_VERSION, Store

    if _no_store(args.store):
        return 2
    with Store(args.store) as store:  # refuses a foreign file or another schema
        problems = store.check()
        try:
            trials = f"{store.count()} trials ({store.count('failed')} failed)"
        except sqlite3.DatabaseError:  # a damaged file: check() has said what is wrong
            trials = "trials unreadable"
    for problem in problems[:_LISTED_PROBLEMS]:
        print(f"problem: {problem}")
    if len(problems) > _LISTED_PROBLEMS:
        print(f"... and {len(problems) - _LISTED_PROBLEMS} more problems")
    print(f"{args.store}: {trials}, store schema {SCHEMA_VERSION}: "
          + (f"{len(problems)} problem(s)" if problems else "no problems found"))
    return 1 if problems else 0


def cmd_reproduce(args) -> int:
    import defenses
    from bench.runner import run
    from bench.store import Store
    from leaderboard.paper import attack_comparison, table2

    specs = _specs(args.suite or ("paper-adult" if not args.scenario else None), args.scenario)
    start = time.time()
    with Store(args.store) as store:
        run(specs, [defenses.make("none")], ("blind",), store, args.data_root)
        rows = [r for r in store.rows() if r["scenario"] in {s.id for s in specs} and r["defense"] == "none"]
    print(table2(rows))
    comparison = attack_comparison(rows)
    if comparison:
        print("\n" + comparison)
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
    if args.data_command == "backbone":
        from bench.models.pretrain import Backbone, pretrain

        spec = Backbone(args.width, args.images, args.epochs, args.seed, args.lr, args.batch_size)
        weights = pretrain(spec, args.data_root)
        meta = json.loads((weights.parent / "meta.json").read_text())
        print(json.dumps({k: v for k, v in meta.items() if not k.startswith("feature_")}, indent=2))
        print(f"backbone {spec.name}: weights and meta.json in {weights.parent}")
        return 0
    from bench.datasets import adult, cifar10

    path = {"adult": adult, "cifar10": cifar10}[args.name].fetch()
    print(f"{args.name}: official files verified in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import sqlite3

    from bench.datasets import DataError
    from bench.store import StoreError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # no command: `run`, with the options given (e.g. --no-progress)
    args = parser.parse_args(argv)
    if args.command in ("run", "list", "submit"):
        import defenses

        for problem in defenses.PLUGIN_PROBLEMS:
            print(f"warning: {problem}", file=sys.stderr)
    handlers = {"run": cmd_run, "leaderboard": cmd_leaderboard, "list": cmd_list,
                "data": cmd_data, "reproduce": cmd_reproduce, "submit": cmd_submit,
                "report": cmd_report, "store": cmd_store}
    try:
        return handlers[args.command](args)
    except (UnknownNameError, DataError, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as err:  # a store damaged after it was opened
        print(f"error: the result store cannot be read: {err} (`subpop-bench store check` "
              f"says more)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are stored; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
