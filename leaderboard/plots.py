"""The defense pages' figures, as PNG files.

Figures are built with :class:`matplotlib.figure.Figure`, never pyplot, so no global figure state
is kept and the Agg renderer draws them (no display needed). Callers pass numbers only: no name
from the result rows is drawn, so a hostile name can neither reach an image nor trip matplotlib's
mathtext parser.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

BEFORE, AFTER = "#999999", "#1f77b4"  # no defense / this defense, the same on every figure
DPI = 100


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)


def td_by_alpha(path: Path, alphas, after, after_ci, before=None, before_ci=None) -> None:
    """Mean target damage (with its 95% interval as error bars) against the poison rate alpha,
    for the defense and, when given, for no defense. ``*_ci``: (lo, hi) per alpha."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    series = [(after, after_ci, AFTER, "with defense")]
    if before is not None:
        series.insert(0, (before, before_ci, BEFORE, "no defense"))
    for values, ci, color, label in series:
        values, ci = np.asarray(values, float), np.asarray(ci, float).reshape(-1, 2)
        yerr = np.abs(np.stack([values - ci[:, 0], ci[:, 1] - values]))
        ax.errorbar(alphas, values, yerr=yerr, color=color, marker="o", capsize=4, label=label)
    ax.set_xlabel("poison rate alpha")
    ax.set_ylabel("mean target damage")
    ax.set_xticks(alphas)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend()
    _save(fig, path)


def td_by_target(path: Path, panels: list[tuple[float, np.ndarray, np.ndarray]]) -> None:
    """Per-subpopulation target damage without (``before``, NaN where unknown) and with the
    defense (``after``), one panel per ``(alpha, before, after)``; subpopulations sorted by
    their damage without defense, so a defense that helps shows its points below the grey line."""
    fig = Figure(figsize=(4 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (alpha, before, after) in zip(axes, panels):
        order = np.argsort(np.nan_to_num(before, nan=-np.inf), kind="stable")[::-1]
        x = np.arange(len(order))
        ax.plot(x, before[order], color=BEFORE, marker=".", label="no defense")
        ax.plot(x, after[order], color=AFTER, marker="o", linestyle="none", label="with defense")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(f"alpha = {alpha:g}")
        ax.set_xlabel("subpopulation (by damage without defense)")
    axes[0].set_ylabel("target damage")
    axes[0].legend()
    _save(fig, path)


def clean_cost_by_size(path: Path, sizes, costs) -> None:
    """The defense's accuracy cost on clean data within each attacked subpopulation against the
    subpopulation's size in the training set: small genuine subpopulations hurt show up left."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.scatter(sizes, costs, color=AFTER)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("subpopulation size (training points)")
    ax.set_ylabel("clean-data accuracy cost")
    _save(fig, path)
