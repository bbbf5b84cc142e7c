"""Results in the shapes of the paper's tables, for side-by-side comparison (PROTOCOL.md section 7)."""
from __future__ import annotations

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
