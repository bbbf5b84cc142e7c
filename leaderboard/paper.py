"""Results in the shapes of the paper's tables, for side-by-side comparison (PROTOCOL.md section 7)."""
from __future__ import annotations

import numpy as np
from tabulate import tabulate

from leaderboard.aggregate import aggregate


def table2(rows: list[dict]) -> str:
    """Table 2 shape, no defense: per scenario the clean accuracy and, per alpha, the number of
    targets and the worst-10/5/1 target damage (per-target damage averaged over trials)."""
    summary = [r for r in aggregate(rows) if r["defense"] == "none"]
    parts = []
    for scenario in dict.fromkeys(r["scenario"] for r in summary):
        mine = sorted((r for r in summary if r["scenario"] == scenario), key=lambda r: r["alpha"])
        clean = sum(r["clean_acc"] for r in mine) / len(mine)
        table = [[f"{r['alpha']:g}", r["n_targets"], r["worst10_td"], r["worst5_td"], r["worst1_td"],
                  r["mean_td"], r["mean_cd"]] for r in mine]
        parts.append(f"#### {scenario} (clean accuracy {clean:.3f})\n\n" + tabulate(
            table, headers=["alpha", "targets", "worst-10 TD", "worst-5 TD", "worst-1 TD",
                            "mean TD", "mean CD"], tablefmt="github", floatfmt=".3f"))
    return "\n\n".join(parts)


def attack_comparison(rows: list[dict]) -> str:
    """Label-flip against the other attacks on the same dataset, model and finder, no defense.

    Per (dataset/model/finder), alpha and attack: trials per (target, alpha), mean TD with its
    bootstrap 95% interval over targets, worst-5 TD, mean CD and the attack's median and total
    seconds per trial. Then the paired comparison that does not favour the attack with more
    trials: on trial 0 of each, attack minus label-flip TD on the same target and alpha, mean
    with a normal 95% interval over targets. Empty when no setting has two attacks."""
    rows = [r for r in rows if r["defense"] == "none" and r["status"] == "ok"]
    settings: dict[str, set] = {}
    for r in rows:
        setting, _, attack = r["scenario"].rpartition("/")
        settings.setdefault(setting, set()).add(attack)
    summary = {(r["scenario"], r["alpha"]): r for r in aggregate(rows)}
    parts = []
    for setting, found in sorted(settings.items()):
        if len(found) < 2:
            continue
        ordered = sorted(found, key=lambda a: (a != "label-flip", a))
        alphas = sorted({r["alpha"] for r in rows if r["scenario"].startswith(setting + "/")})
        table, paired = [], []
        for alpha in alphas:
            td0 = {}
            for attack in ordered:
                scenario = f"{setting}/{attack}"
                mine = [r for r in rows if r["scenario"] == scenario and r["alpha"] == alpha]
                if not mine:
                    continue
                s = summary[(scenario, alpha)]
                seconds = [r["timing"].get("attack_s", 0.0) for r in mine]
                table.append([f"{alpha:g}", attack, round(len(mine) / s["n_targets"]),
                              f"{s['mean_td']:.3f} [{s['mean_td_lo']:.3f}, {s['mean_td_hi']:.3f}]",
                              s["worst5_td"], s["mean_cd"], float(np.median(seconds)), sum(seconds)])
                td0[attack] = {r["target"]: r["metrics"]["td"] for r in mine if r["trial"] == 0}
            base = td0.get("label-flip", {})
            for attack in ordered[1:]:
                common = sorted(set(base) & set(td0.get(attack, {})))
                if len(common) > 1:
                    d = np.array([td0[attack][t] - base[t] for t in common])
                    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
                    paired.append([f"{alpha:g}", f"{attack} - label-flip", len(d),
                                   f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"])
        parts.append(f"#### {setting}, no defense\n\n" + tabulate(
            table, headers=["alpha", "attack", "trials", "mean TD [95% CI]", "worst-5 TD", "mean CD",
                            "attack s/trial (median)", "attack s (total)"],
            tablefmt="github", floatfmt=".3f"))
        if paired:
            parts.append(tabulate(paired, headers=["alpha", "paired on trial 0", "targets",
                                                   "mean TD difference [95% CI]"], tablefmt="github"))
    return "\n\n".join(parts)
