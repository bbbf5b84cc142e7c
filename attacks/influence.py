"""Influence attack (``influence``, PROTOCOL.md section 4; Koh & Liang 2017 extended to a
subpopulation): ``go`` with the target's gradient preconditioned by the inverse damped Hessian of
the surrogate's training loss, v = (H + λI)^-1 ∇θL(X_a, Y_a), so that Obj(X_p) = -v^T ∇θL(X_p, Y_p)
is the influence of upweighting the poisons on the target's true-label loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks import ATTACKS
from attacks.optim import OptimisationAttack, Solve, Surrogate
from bench.validation import check_integer, check_positive


@ATTACKS.register("influence")
@dataclass(frozen=True)
class Influence(OptimisationAttack):
    """``damping`` λ >= 0 added to the Hessian's diagonal. Up to ``exact_max_params`` parameters
    (the Adult MLP with 10 hidden units has 511) the Hessian is formed and LU-factorised once per
    surrogate (a float64 P x P matrix: 200 MB at P = 5000); above, each target's system is solved by
    conjugate gradient with Hessian-vector products (``cg_iters`` iterations at most, stopping at
    relative residual ``cg_tol``). Other hyper-parameters as for ``go``."""

    name = "influence"
    damping: float = 0.1
    exact_max_params: int = 5000
    cg_iters: int = 100
    cg_tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        check_positive("damping", self.damping, self.name, allow_zero=True)
        check_integer("exact_max_params", self.exact_max_params, 0, self.name)
        check_integer("cg_iters", self.cg_iters, 1, self.name)
        check_positive("cg_tol", self.cg_tol, self.name)

    def make_solve(self, surrogate: Surrogate) -> Solve:
        if surrogate.n_params > self.exact_max_params:
            return lambda g: conjugate_gradient(
                lambda v: surrogate.hvp(v) + self.damping * v, g, self.cg_iters, self.cg_tol)
        A = hessian(surrogate) + self.damping * torch.eye(surrogate.n_params, dtype=torch.float64)
        LU, pivots, info = torch.linalg.lu_factor_ex(A)
        if info.item() != 0:
            raise ValueError(f"influence: the damped Hessian (damping {self.damping}) of the "
                             f"surrogate is singular; use a larger damping")
        return lambda g: torch.linalg.lu_solve(LU, pivots, g[:, None])[:, 0]


def hessian(surrogate: Surrogate, chunk: int = 64) -> torch.Tensor:
    """The Hessian (P, P) of the surrogate's training loss, one Hessian-vector product per column
    (``chunk`` columns at a time bound the memory to chunk x n x width), symmetrised."""
    eye = torch.eye(surrogate.n_params, dtype=torch.float64)
    H = torch.func.vmap(surrogate.hvp, chunk_size=chunk)(eye)
    return (H + H.T) / 2


def conjugate_gradient(apply, b: torch.Tensor, iters: int, tol: float) -> torch.Tensor:
    """Approximate A^-1 b (P,) for the symmetric operator ``apply`` (v ↦ A v).

    A ReLU network's Hessian need not be positive definite: on a direction of non-positive
    curvature the iteration stops and returns its current iterate (the truncated-Newton rule), or
    ``b`` itself when that happens at the first step (the ``go`` direction)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for k in range(iters):
        if rr.sqrt() <= tol * b.norm():
            break
        Ap = apply(p)
        curvature = p @ Ap
        if curvature <= 0:
            return x if k > 0 else b
        step = rr / curvature
        x = x + step * p
        r = r - step * Ap
        rr, rr_old = r @ r, rr
        p = r + (rr / rr_old) * p
    return x
