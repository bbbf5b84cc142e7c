"""Gradient optimisation (``go``, PROTOCOL.md section 4): label-flip poisons moved to maximise
Obj(X_p) = -∇θL(X_a, Y_a, θ_old)^T ∇θL(X_p, Y_p, θ_old), the first-order increase of the target's
true-label loss when the surrogate takes a gradient step on the poisons (see :mod:`attacks.optim`
for the sign, the labels and the ascent)."""
from __future__ import annotations

from dataclasses import dataclass

from attacks import ATTACKS
from attacks.optim import OptimisationAttack, Solve, Surrogate


@ATTACKS.register("go")
@dataclass(frozen=True)
class GO(OptimisationAttack):
    """50 steps (``steps``) of projected gradient ascent from the label-flip poisons, M = I.

    Hyper-parameters: ``rule``, ``step_size``, ``steps``, ``surrogate_seed`` (see
    :class:`attacks.optim.OptimisationAttack`)."""

    name = "go"

    def make_solve(self, surrogate: Surrogate) -> Solve:
        return lambda g: g
