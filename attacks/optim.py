"""The shared core of the optimisation attacks ``go`` and ``influence`` (PROTOCOL.md section 4).

Both start from the label-flip poisons (X_0, Y_p) and move the poison features X_p by gradient
ascent on

    Obj(X_p) = -(M^-1 g_a)^T ∇θ L(X_p, Y_p, θ_old),    g_a = ∇θ L(X_a, Y_a, θ_old),

where θ_old are the parameters of the attacker's surrogate (the victim recipe trained on D_aux),
X_a the target subpopulation's D_aux points with their true labels Y_a, L(X_a, Y_a) their mean
loss, L(X_p, Y_p) the summed loss of the poisons (so each poison's move does not depend on m), and
M the identity (``go``) or the damped Hessian of the surrogate's training loss (``influence``).

Choice of Y_a and sign: Y_a are the *true* labels and the sign is minus. One gradient step of size
η on the poisons changes θ by -η ∇θL(X_p, Y_p), hence the target's true-label loss by
-η g_a^T ∇θL(X_p, Y_p) + O(η²) = η Obj (M = I): maximising Obj maximises the first-order increase
of the target's loss under its true labels, which is the damage the benchmark measures. With
M = H + λI it is the influence function of Koh & Liang (2017): upweighting the poisons by ε moves
the optimum by -ε H^-1 ∇θL(X_p, Y_p) and the target's true-label loss by ε Obj. PROTOCOL.md writes
Obj = +∇θL(X_a, Y_a)^T ∇θL(X_p, Y_p); with the true labels that sign would align the poisons with
the target's own gradient and lower its loss (help the target). The plus sign fits Y_a = the
attacker's wrong labels instead (lower the loss of the wrong labels); for a binary task that pushes
each target point the same way with other weights, but it is no longer the first-order change of
the loss the damage is about, nor Koh & Liang's influence, so we keep the true labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from scipy.special import expit, softmax

from attacks import AttackInput
from attacks.label_flip import LabelFlip
from bench.models.heads import LinearProbe
from bench.models.mlp import MLP
from bench.validation import check_integer, check_positive

Solve = Callable[[torch.Tensor], torch.Tensor]  # g (P,) -> M^-1 g (P,)


class Surrogate:
    """A trained ``mlp``/``logreg`` model as a function of its flat parameters.

    ``theta`` (P,) float64 holds [W_0, b_0, W_1, b_1, ...] with ``W_i`` (fan_in, fan_out); the loss
    is the recipe's cross-entropy (one logistic output for two classes, softmax otherwise).
    ``X_train`` (n, d), ``y_train`` (n,) and ``penalty`` (the recipe's L2 coefficient ``alpha``)
    define the training loss whose Hessian ``influence`` uses.
    """

    def __init__(self, model, X_train: np.ndarray, y_train: np.ndarray, penalty: float):
        self.shapes = [(W.shape, b.shape) for W, b in zip(model.weights, model.biases)]
        self.theta = torch.cat([torch.from_numpy(np.asarray(a, np.float64)).ravel()
                                for W, b in zip(model.weights, model.biases) for a in (W, b)])
        self.n_classes = model.n_classes
        self.X_train = torch.from_numpy(np.asarray(X_train, np.float64))
        self.y_train = torch.from_numpy(np.asarray(y_train, np.int64))
        self.penalty = penalty

    @property
    def n_params(self) -> int:
        return self.theta.numel()

    def layers(self, flat) -> list:
        """[(W_i, b_i)]: views of a flat (P,) torch tensor or numpy array in the layout of theta."""
        out, offset = [], 0
        for w_shape, b_shape in self.shapes:
            w_size, b_size = math.prod(w_shape), math.prod(b_shape)
            out.append((flat[offset:offset + w_size].reshape(w_shape),
                        flat[offset + w_size:offset + w_size + b_size].reshape(b_shape)))
            offset += w_size + b_size
        return out

    def losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example cross-entropy (n,) of inputs ``X`` (n, d) float64 with labels ``y`` (n,)."""
        layers = self.layers(theta)
        h = X
        for i, (W, b) in enumerate(layers):
            h = h @ W + b
            if i < len(layers) - 1:
                h = torch.relu(h)
        if self.n_classes == 2:
            return torch.nn.functional.softplus(h[:, 0]) - y.to(h.dtype) * h[:, 0]
        return -torch.log_softmax(h, dim=1).gather(1, y[:, None])[:, 0]

    def train_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The recipe's full-batch objective on D_aux: mean cross-entropy + alpha/(2n) ||W||²."""
        sq = sum(W.square().sum() for W, _ in self.layers(theta))
        n = len(self.y_train)
        return self.losses(theta, self.X_train, self.y_train).mean() + 0.5 * self.penalty / n * sq

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hessian-vector product (P,) of :meth:`train_loss` at ``theta`` (forward over reverse)."""
        return torch.func.jvp(torch.func.grad(self.train_loss), (self.theta,), (v,))[1]

    def loss_grad(self, X: np.ndarray, y: np.ndarray) -> torch.Tensor:
        """∇θ of the mean loss (P,) of ``X`` (n, d) with labels ``y`` (n,)."""
        theta = self.theta.clone().requires_grad_()
        loss = self.losses(theta, torch.from_numpy(np.asarray(X, np.float64)),
                           torch.from_numpy(np.asarray(y, np.int64))).mean()
        return torch.autograd.grad(loss, theta)[0]

    def objective(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Obj = ``w``^T ∇θ L(X, y) for w (P,), L the summed loss of ``X`` (n, d) with labels ``y``
        (n,), and its gradient (n, d) w.r.t. ``X``.

        The mixed second derivative that double backprop would give, written out by hand: the
        ascent evaluates it 50 times per trial, and on networks this small autograd's per-op
        overhead made it ~40x slower (tests compare the two, and finite differences). Obj is the
        derivative of L at θ + εw, ε = 0, so the forward pass carries each pre-activation a_i with
        its tangent ȧ_i, and one reverse pass through both gives ∇_X Obj (ReLU masks are locally
        constant).
        """
        params, tangents = self.layers(self.theta.numpy()), self.layers(np.asarray(w, np.float64))
        h = np.asarray(X, np.float64)
        dh, masks = np.zeros_like(h), []
        for i, ((W, b), (dW, db)) in enumerate(zip(params, tangents)):
            a, da = h @ W + b, h @ dW + db + dh @ W
            if i < len(params) - 1:
                masks.append(a > 0)
                h, dh = a * masks[-1], da * masks[-1]
        # g = ∂ℓ/∂z, Obj = Σ g·ż; its adjoints: ∂Obj/∂z = (∂g/∂z) ż and ∂Obj/∂ż = g.
        if self.n_classes == 2:
            p = expit(a)
            g = p - np.asarray(y)[:, None]
            adj_a = p * (1 - p) * da
        else:
            p = softmax(a, axis=1)
            g = p - np.eye(self.n_classes)[y]
            adj_a = p * da - p * (p * da).sum(1, keepdims=True)
        value, adj_da = float((g * da).sum()), g
        for i in reversed(range(len(params))):
            (W, _), (dW, _) = params[i], tangents[i]
            adj_h, adj_dh = adj_a @ W.T + adj_da @ dW.T, adj_da @ W.T
            if i > 0:
                adj_a, adj_da = adj_h * masks[i - 1], adj_dh * masks[i - 1]
        return value, adj_h


def continuous_columns(domain, d: int, attack: str) -> np.ndarray:
    """Boolean mask (d,) of the columns outside every one-hot group; rejects a missing, discrete or
    mis-shaped domain and one with no continuous column (text: token ids, nothing to move)."""
    if domain is None:
        raise ValueError(f"{attack} needs the valid input domain (AttackInput.domain) to keep its "
                         f"poisons valid; none was given")
    if getattr(domain, "discrete", False):
        raise ValueError(f"{attack} moves input features by gradient ascent and needs continuous "
                         f"features; this dataset's domain is marked discrete (e.g. text)")
    if np.shape(domain.lower) != (d,) or np.shape(domain.upper) != (d,):
        raise ValueError(f"domain bounds must have shape ({d},), got {np.shape(domain.lower)} and "
                         f"{np.shape(domain.upper)}")
    mask = np.ones(d, bool)
    for group in domain.onehot_groups:
        mask[list(group)] = False
    if not mask.any():
        raise ValueError(f"{attack} moves input features by gradient ascent and needs continuous "
                         f"features; every column of this dataset's domain is in a one-hot group")
    return mask


def project(Z: np.ndarray, domain) -> np.ndarray:
    """The point of the valid domain for each row of ``Z`` (m, d): every column clipped to
    [lower, upper], then each one-hot group set to exactly one hot, at its largest entry (ties to
    the first column)."""
    X = np.clip(Z, domain.lower, domain.upper)
    rows = np.arange(len(Z))
    for group in domain.onehot_groups:
        cols = np.asarray(group)
        X[:, cols] = 0.0
        X[rows, cols[Z[:, cols].argmax(1)]] = 1.0
    return X


def ascend(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], X0: np.ndarray, domain,
           continuous: np.ndarray, step_size: float, steps: int) -> tuple[np.ndarray, list[float]]:
    """Projected gradient ascent from ``X0`` (m, d); returns the poisons (m, d) float64 and the
    objective at each of the ``steps`` + 1 iterates.

    Each poison moves ``step_size`` (L2, input units) along its own gradient per step: Obj sums
    over the poisons, so a poison's gradient depends on it alone, and normalising makes the step
    size mean the same for every target, dataset and M (H^-1 rescales the gradient by orders of
    magnitude). After each step the poisons are projected onto the valid domain and the gradient
    is taken there. One-hot groups are projected lazily: the ascent keeps their unprojected values
    (continuous columns are clipped in place), so a category changes once the accumulated gradient
    favours it; projecting the iterate itself would snap every small step back to the start.
    """
    Z = np.asarray(X0, np.float64).copy()
    X = project(Z, domain)
    values = []
    for _ in range(steps):
        value, grad = objective(X)
        values.append(value)
        norms = np.linalg.norm(grad, axis=1, keepdims=True)
        Z += step_size * grad / np.where(norms > 0, norms, 1.0)
        Z[:, continuous] = np.clip(Z[:, continuous], domain.lower[continuous], domain.upper[continuous])
        X = project(Z, domain)
    values.append(objective(X)[0])
    return X, values


@dataclass(frozen=True)
class OptimisationAttack:
    """Label-flip poisons moved by :func:`ascend` on Obj (module docstring); subclasses choose M.

    ``rule``: the label-flip rule of the starting poisons; ``step_size`` (> 0, L2 distance in
    input units per step and poison) and ``steps`` (>= 1) of the ascent; ``surrogate_seed``: the
    seed of the surrogate's training. The default step, 0.02, lets a poison travel at most one
    input unit in 50 steps (one standard deviation of an Adult numeric feature): on Adult, longer
    paths raised Obj further but lowered the damage to the retrained victim (docs/attacks.md).

    The surrogate and M^-1 depend only on D_aux and the recipe, so they are computed on first use
    and reused while ``generate`` sees the same D_aux and recipe objects (one attack instance per
    scenario serves all its targets, rates and trials).
    """

    name: ClassVar[str]
    rule: str = "opposite"
    step_size: float = 0.02
    steps: int = 50
    surrogate_seed: int = 0
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        LabelFlip(self.rule)  # validates the rule with label-flip's own message
        check_positive("step_size", self.step_size, self.name)
        check_integer("steps", self.steps, 1, self.name)
        check_integer("surrogate_seed", self.surrogate_seed, 0, self.name)

    def make_solve(self, surrogate: Surrogate) -> Solve:
        """g ↦ M^-1 g for this attack's M, built once per surrogate."""
        raise NotImplementedError

    def prepare(self, data: AttackInput) -> tuple[Surrogate, Solve, np.ndarray]:
        """The surrogate trained on D_aux, its ``solve`` and the surrogate's inputs for D_aux
        (the features of the frozen encoder for an LL recipe, else X_aux itself), cached per
        (D_aux, recipe)."""
        key = (data.X_aux, data.y_aux, data.recipe, data.n_classes)
        cached = self._cache.get("key")
        if cached is None or any(a is not b for a, b in zip(cached, key)):
            head, encoder = victim_head(data.recipe, self.name)
            F_aux = data.X_aux if encoder is None else data.recipe.features(data.X_aux)
            model = head.fit(F_aux, data.y_aux, data.n_classes, seed=self.surrogate_seed)
            surrogate = Surrogate(model, F_aux, data.y_aux, head.alpha)
            self._cache.update(key=key, surrogate=surrogate, solve=self.make_solve(surrogate), F_aux=F_aux,
                               encoder=encoder)
        return self._cache["surrogate"], self._cache["solve"], self._cache["F_aux"]

    def generate(self, data: AttackInput, m: int, rng: np.random.Generator):
        """Return poisons ``X_p`` (m, d) float32, inside ``data.domain``, and ``y_p`` (m,) int64
        (the label-flip labels, unchanged)."""
        continuous = continuous_columns(data.domain, data.X_aux.shape[1], self.name)
        X0, y_p = LabelFlip(self.rule).generate(data, m, rng)
        if m == 0:
            return X0, y_p
        surrogate, solve, F_aux = self.prepare(data)
        rows = np.flatnonzero(data.target)
        w = -solve(surrogate.loss_grad(F_aux[rows], data.y_aux[rows])).numpy()
        encoder = self._cache["encoder"]
        if encoder is None:
            objective = lambda X: surrogate.objective(w, X, y_p)  # noqa: E731
        else:
            objective = lambda X: through_encoder(encoder, surrogate, w, X, y_p)  # noqa: E731
        X_p, _ = ascend(objective, X0, data.domain, continuous, self.step_size, self.steps)
        return X_p.astype(np.float32), y_p


def victim_head(recipe, attack: str) -> tuple[MLP, object]:
    """(the recipe the surrogate trains on its inputs, the frozen encoder in front of it or None):
    ``mlp``/``logreg`` train on the inputs; a last-layer recipe trains its head on the features
    of an encoder that must be differentiable, so that poisons move in input space."""
    if isinstance(recipe, MLP):
        return recipe, None
    if isinstance(recipe, LinearProbe):
        if not hasattr(recipe.encoder, "differentiable"):
            raise ValueError(f"{attack} moves inputs through the recipe's frozen encoder, and "
                             f"{type(recipe.encoder).__name__} has no differentiable path")
        return recipe.head, recipe.encoder
    raise ValueError(f"{attack} trains its surrogate with the victim recipe and supports the mlp "
                     f"and logreg recipes and the last-layer (-ll) recipes of image encoders; "
                     f"got {recipe!r}")


def through_encoder(encoder, surrogate: Surrogate, w: np.ndarray, X: np.ndarray, y: np.ndarray,
                    batch_size: int = 256) -> tuple[float, np.ndarray]:
    """:meth:`Surrogate.objective` of inputs ``X`` (m, d) whose features the surrogate sees through
    the frozen ``encoder``: Obj(E(X)) and its gradient (m, d) in input space, the surrogate's
    feature gradient pulled back through ``encoder.differentiable`` (a vector-Jacobian product).
    Obj sums over rows, so ``batch_size`` rows at a time bound the encoder's memory."""
    total, grads = 0.0, []
    for start in range(0, len(X), batch_size):
        x = torch.tensor(X[start:start + batch_size], dtype=torch.float32, requires_grad=True)
        features = encoder.differentiable(x)
        value, grad_features = surrogate.objective(w, features.detach().numpy(), y[start:start + batch_size])
        (grad,) = torch.autograd.grad(features, x, torch.from_numpy(grad_features).to(features.dtype))
        total += value
        grads.append(grad.numpy().astype(np.float64))
    return total, np.concatenate(grads)
