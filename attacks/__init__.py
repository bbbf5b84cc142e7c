"""Poisoning attacks. An attack turns the attacker's view (D_aux and a target subpopulation) into
a poison set D_p; it never sees D or D_t."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.registry import Registry

ATTACKS: Registry = Registry("attack")


@dataclass(frozen=True, eq=False)
class AttackInput:
    """The attacker's knowledge: ``X_aux`` (n, d), ``y_aux`` (n,), the target's rows of D_aux
    ``target`` (boolean mask (n,)), ``n_classes``, the valid input ``domain`` and the victim's
    model ``recipe`` (for the model-specific attacks' surrogate, trained on D_aux)."""

    X_aux: np.ndarray
    y_aux: np.ndarray
    target: np.ndarray
    n_classes: int
    domain: object = None
    recipe: object = None


def poison_count(alpha: float, target_size: int) -> int:
    """m = int(alpha * |s ∩ D_aux|) (PROTOCOL.md section 4)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return int(alpha * target_size)


def make(name: str, **params):
    return ATTACKS.get(name)(**params)


from attacks import go, influence, label_flip  # noqa: E402,F401  (register built-ins)
