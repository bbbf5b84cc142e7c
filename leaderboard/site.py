"""The static leaderboard site: an index of ranked boards and one page per defense.

Every string taken from the trial rows (names, errors, parameters) is escaped by Jinja2's
autoescape, and file names come from :func:`slug`, never from a name as it is, so rows from an
untrusted bundle can neither inject markup nor write outside the site folder. The pages need no
server: relative links, inline sorting script, PNG figures next to each defense page.
"""
from __future__ import annotations

import hashlib
import math
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import jinja2
import numpy as np

from bench.scenarios import SUITES
from leaderboard import plots
from leaderboard.aggregate import REFERENCE, aggregate, boards, is_oracle, per_target, target_means

TEMPLATES = Path(__file__).parent / "templates"
DEFENSES_DIR = "defenses"
_SLUG_MAX = 60


def slug(name: str) -> str:
    """A safe file name for ``name``: lower-case letters, digits, '.', '_' and '-', never starting
    or ending with '.' or '-' (so never '..', a path or a hidden file). A name that had to change
    gets a hash of itself appended, so distinct names never share a slug."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower())[:_SLUG_MAX].strip(".-")
    if cleaned == name:
        return name
    return f"{cleaned or 'defense'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it resolves inside ``root`` (a second guard behind slug)."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"refusing to write {path}: it is outside the site folder {root}")
    return path


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value, digits: int = 3) -> str:
    return "–" if _missing(value) else f"{value:.{digits}f}"


def _sort_key(value) -> str:
    """The ``data-sort`` value of a cell: the number itself, empty for no value (sorts last)."""
    return "" if _missing(value) else repr(float(value))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, sort_key=_sort_key)
    env.tests["missing"] = _missing
    return env


def _suites(scenario: str) -> list[str]:
    return [name for name in SUITES.names() if scenario in SUITES.get(name)]


def _sections(ranked: list[dict]) -> list[dict]:
    """The index's sections: per scenario its suites and its boards as (track, entries)."""
    by_scenario: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for entry in ranked:
        by_scenario[entry["scenario"]][entry["board"]].append(entry)
    return [{"scenario": scenario, "suites": _suites(scenario), "boards": list(tables.items())}
            for scenario, tables in by_scenario.items()]


def _figures(folder: Path, prefix: str, mine: list[dict], reference: list[dict], per_alpha: list[dict],
             none_per_alpha: list[dict]) -> list[dict]:
    """Draw one (scenario, track) section's figures into ``folder``; returns their file names
    and captions. ``mine``/``reference``: trial rows of the defense / of no defense (maybe none);
    ``per_alpha``/``none_per_alpha``: their :func:`aggregate` summaries."""
    figures = []

    def draw(kind: str, caption: str, plot, *args) -> None:
        name = f"{prefix}-{kind}.png"
        plot(folder / name, *args)
        figures.append({"file": name, "caption": caption})

    alphas = [s["alpha"] for s in per_alpha]
    none_at = {s["alpha"]: s for s in none_per_alpha}
    before = before_ci = None
    if reference:
        before = [none_at[a]["mean_td"] if a in none_at else math.nan for a in alphas]
        before_ci = [(none_at[a]["mean_td_lo"], none_at[a]["mean_td_hi"]) if a in none_at
                     else (math.nan, math.nan) for a in alphas]
    draw("td-by-alpha", "Mean target damage (95% interval) against alpha", plots.td_by_alpha, alphas,
         [s["mean_td"] for s in per_alpha], [(s["mean_td_lo"], s["mean_td_hi"]) for s in per_alpha],
         before, before_ci)

    after_td, before_td = per_target(mine, "td"), per_target(reference, "td")
    panels = []
    for alpha in alphas:
        cells = sorted(c for c in after_td if c[1] == alpha)
        panels.append((alpha, np.array([before_td.get(c, math.nan) for c in cells]),
                       np.array([after_td[c] for c in cells])))
    draw("td-by-subpopulation", "Target damage of each attacked subpopulation, without and with "
         "the defense", plots.td_by_target, panels)

    sizes = {r["target"]: r["metrics"]["target_train"] for r in mine
             if r["status"] == "ok" and "target_train" in r["metrics"]}
    costs = target_means(mine, "defense_clean_cost_s")
    shown = sorted(t for t in sizes if t in costs)
    draw("clean-cost-by-size", "Accuracy cost on clean data within each attacked subpopulation, "
         "by its size", plots.clean_cost_by_size, [sizes[t] for t in shown], [costs[t] for t in shown])
    return figures


def _defense_page(env: jinja2.Environment, folder: Path, defense: str, rows: list[dict],
                  ranked: list[dict], summaries: list[dict], title: str) -> None:
    """Write ``folder``/index.html and its figures for one defense."""
    folder.mkdir(parents=True, exist_ok=True)
    mine_all = [r for r in rows if r["defense"] == defense]
    sections = []
    for scenario, track in sorted({(r["scenario"], r["track"]) for r in mine_all}):
        this = (scenario, defense, track)
        mine = [r for r in mine_all if (r["scenario"], r["track"]) == (scenario, track)]
        reference = [r for r in rows if r["scenario"] == scenario and r["defense"] == REFERENCE]
        per_alpha = [s for s in summaries if (s["scenario"], s["defense"], s["track"]) == this]
        none_per_alpha = [s for s in summaries if s["scenario"] == scenario and s["defense"] == REFERENCE]
        ok = any(r["status"] == "ok" for r in mine)
        sections.append({
            "scenario": scenario, "track": track,
            "places": [e for e in ranked if (e["scenario"], e["defense"], e["track"]) == this],
            "board_sizes": Counter(e["board"] for e in ranked if e["scenario"] == scenario),
            "per_alpha": sorted(per_alpha + ([] if defense == REFERENCE else none_per_alpha),
                                key=lambda s: (s["alpha"], s["defense"] != defense)),
            "figures": (_figures(folder, f"s{len(sections)}", mine, reference, per_alpha, none_per_alpha)
                        if ok else []),
            "errors": Counter(r["error"] for r in mine if r["status"] != "ok").most_common(),
        })
    versions = sorted({(r["defense_version"], r["defense_params"]) for r in mine_all})
    (folder / "index.html").write_text(env.get_template("defense.html").render(
        title=title, root="../../", defense=defense, reference=REFERENCE, versions=versions,
        sections=sections), encoding="utf-8")


def build(rows: list[dict], out: str | Path, title: str = "subpop-bench leaderboard") -> Path:
    """Write the site for ``rows`` (trial rows as :meth:`bench.store.Store.rows` returns them)
    into the folder ``out``; returns the path of its index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    ranked, summaries = boards(rows), aggregate(rows)
    slugs = {d: slug(d) for d in sorted({r["defense"] for r in rows})}
    clash = [d for d, s in slugs.items() if list(slugs.values()).count(s) > 1]
    if clash:  # only a name crafted to look like another's slug, hash included, gets here
        raise ValueError(f"defense names {clash} would share the page folder {slugs[clash[0]]!r}")
    pages = {d: f"{DEFENSES_DIR}/{s}/index.html" for d, s in slugs.items()}
    shutil.copyfile(TEMPLATES / "style.css", out / "style.css")
    for defense, name in slugs.items():
        _defense_page(env, _inside(out, out / DEFENSES_DIR / name), defense, rows, ranked, summaries, title)
    index = out / "index.html"
    index.write_text(env.get_template("index.html").render(
        title=title, root="", sections=_sections(ranked), pages=pages, reference=REFERENCE,
        oracles={d for d in slugs if is_oracle(d)}, n_trials=len(rows)), encoding="utf-8")
    return index
