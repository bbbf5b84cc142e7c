"""Fully connected networks trained with scikit-learn MLPClassifier's recipe, many at once.

Recipe (scikit-learn defaults): ReLU hidden layers, a single logistic output for two classes and
softmax otherwise, Glorot-uniform initialisation, Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8),
minibatches of min(200, n) reshuffled every epoch, L2 penalty ``alpha``/2 * ||W||^2 / batch size,
and stopping once the epoch loss has not improved by ``tol`` for more than ``n_iter_no_change``
epochs.

Two trainers implement it. On CPU, networks with one hidden layer (<= 64 units, <= 16 classes,
no DP-SGD) go to the fused kernel of ``bench/models/fused.py``, one job per call, jobs in parallel
threads. Everything else (GPUs, DP-SGD, deeper networks, logistic regression, ``backend="torch"``)
goes to the batched torch trainer here: ``fit_many`` trains K jobs together with stacked
parameters (K, fan_in, fan_out), one batched matmul per layer for all K, each job with its own
minibatch order, Adam step counter and early stopping. A job gives the same model alone or in a
batch, and from either trainer, up to floating-point noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.models import MODELS, TrainJob, check_weights, fused


@dataclass(frozen=True)
class MLP:
    """Hyper-parameters of the recipe. ``hidden`` () gives logistic regression."""

    hidden: tuple[int, ...] = (10,)
    lr: float = 1e-3
    batch_size: int = 200
    alpha: float = 1e-4
    max_epochs: int = 3000
    tol: float = 1e-4
    n_iter_no_change: int = 10
    # A chunk (jobs trained together) holds at most chunk_size jobs and, past 64 jobs, about
    # chunk_visits row visits per epoch in all. Measured on a 2-core CPU (docs/performance.md):
    # Adult's 7,841-row jobs train 1.4-1.5x faster per model in chunks of 64 than of 256, while
    # jobs of a few hundred rows (the digits suites) are faster in chunks of 256, where the
    # fixed cost of each epoch is shared by more jobs.
    chunk_size: int = 256
    chunk_visits: int = 2 ** 19
    device: str = "cpu"
    # "auto": the fused CPU kernel (bench/models/fused.py) where it applies (CPU, one hidden
    # layer of <= 64 units, <= 16 classes, no DP-SGD job, a C++ compiler), else the batched torch
    # trainer; "torch" always the latter.
    backend: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {self.hidden}")
        for name in ("lr", "batch_size", "max_epochs", "chunk_size", "chunk_visits"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.alpha < 0 or self.tol < 0 or self.n_iter_no_change < 1:
            raise ValueError("alpha and tol must be >= 0 and n_iter_no_change >= 1")
        if self.backend not in ("auto", "torch"):
            raise ValueError(f"backend must be 'auto' or 'torch', got {self.backend!r}")

    def fit(self, X, y, n_classes: int, sample_weight=None, seed: int = 0) -> "MLPModel":
        """Train one model on X (n, d) with labels y (n,) in [0, n_classes)."""
        weights = np.ones(len(y)) if sample_weight is None else sample_weight
        return self.fit_many(X, y, n_classes, [TrainJob(weights, seed)])[0]

    def fit_many(self, X, y, n_classes: int, jobs: list[TrainJob]) -> list["MLPModel"]:
        """Train one model per job over the pool X (n, d), y (n,), in chunks (see ``chunk_visits``)."""
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (n, d) and y (n,); got {X.shape} and {y.shape}")
        if n_classes < 2 or y.min(initial=0) < 0 or y.max(initial=0) >= n_classes:
            raise ValueError(f"labels must lie in [0, {n_classes}) with n_classes >= 2")
        if (self.backend == "auto" and torch.device(self.device).type == "cpu"
                and not any(j.private for j in jobs) and fused.supports(self.hidden, n_classes)):
            return _train_fused(self, X, y, n_classes, jobs)
        models: list[MLPModel] = []
        # Weights are validated later, by _Schedule; _visits leaves NaN and negative ones out.
        visits = max((_visits(np.asarray(j.weights, np.float64))[1].sum() for j in jobs), default=1)
        per_chunk = min(self.chunk_size, max(64, int(self.chunk_visits // max(visits, 1))))
        with torch.inference_mode():
            for start in range(0, len(jobs), per_chunk):
                models += _train_chunk(self, X, y, n_classes, jobs[start:start + per_chunk])
        return models


@dataclass(frozen=True, eq=False)
class MLPModel:
    """A trained network: ``weights[i]`` (fan_in, fan_out) and ``biases[i]`` (fan_out,) float32."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    n_classes: int
    n_epochs: int

    def embed(self, X) -> np.ndarray:
        """Penultimate representation (n, last hidden width); the input itself without hidden layers."""
        h = np.asarray(X, dtype=np.float32)
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ W + b, 0.0)
        return h

    def decision_function(self, X) -> np.ndarray:
        return self.embed(X) @ self.weights[-1] + self.biases[-1]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, n_classes)."""
        z = self.decision_function(X).astype(np.float64)
        if self.n_classes == 2:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X).argmax(1) if self.n_classes > 2 else \
            (self.decision_function(X)[:, 0] > 0).astype(np.int64)


def _visits(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pool rows a job with weights ``w`` (n,) visits (weight > 0) and how many times per
    epoch: ceil(weight), each visit carrying an equal share of the weight."""
    support = np.flatnonzero(w > 0)
    return support, np.ceil(w[support]).astype(np.int64)


class _Schedule:
    """One job's epoch plan: which pool rows it visits, each visit's loss weight, its RNG."""

    def __init__(self, job: TrainJob, n_pool: int, batch_size: int):
        w = check_weights(job.weights, n_pool)
        support, copies = _visits(w)
        self.rows = np.repeat(support, copies)
        self.visit_weight = np.repeat(w[support] / copies, copies)
        self.n = len(self.rows)
        self.batch = min(batch_size, self.n)
        self.steps = math.ceil(self.n / self.batch)
        self.rng = np.random.default_rng(job.seed)
        self.private = job.private
        # DP noise has its own stream so that it leaves the minibatch order unchanged.
        self.noise_rng = np.random.default_rng([job.seed, 1]) if job.private else None


def _init_params(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        params.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
        params.append(rng.uniform(-bound, bound, fan_out))
    return params


def loss_and_grads(Wt: list, bias: list, inputs, target, scale, decay, clip=None):
    """Weighted data loss (K,) and the gradients of data loss + L2 penalty, for K stacked nets.

    ``Wt[i]`` (K, fan_out, fan_in), ``bias[i]`` (K, fan_out, 1), ``inputs`` (K, d, B), ``target``
    (K, 1, B) (for a single logistic output the label's sign, float -1/+1; class ids otherwise),
    ``scale`` (K, 1, B)
    per-example loss weights, ``decay`` (K, 1, 1) L2 coefficient. The loss of job k is
    sum_b scale[k,b] * CE_b + decay[k]/2 * ||W_k||^2, and the gradients are returned as
    ``[dWt_0, dbias_0, dWt_1, ...]`` in the parameter shapes. ``clip`` (K, 1, 1), when given,
    first scales each example's (weighted) data gradient down to L2 norm at most ``clip[k]``
    (DP-SGD's per-example clipping; ``inf`` leaves a job unclipped).
    """
    acts = [inputs]
    for i in range(len(Wt)):
        z = torch.baddbmm(bias[i], Wt[i], acts[-1])
        acts.append(torch.relu(z) if i < len(Wt) - 1 else z)
    logits = acts.pop()
    if logits.shape[1] == 1:
        # With s = 2y - 1 and q = sigmoid(s z), the probability of the true label: CE = -log q
        # and dCE/dz = s (q - 1). Written so, not with softplus or log1p, whose CPU kernels are
        # not vectorised (5-6x slower than sigmoid and log here). q is floored at 1e-30, so an
        # example's loss saturates at 69 (a logit 69 on the wrong side); its gradient does not.
        q = torch.sigmoid(logits * target)
        data = -torch.log(q.clamp(min=1e-30))
        delta = (q - 1) * target
    else:
        log_p = torch.log_softmax(logits, dim=1)
        data = -log_p.gather(1, target)
        classes = torch.arange(logits.shape[1], device=logits.device)[None, :, None]
        delta = log_p.exp() - (classes == target).to(logits.dtype)
    deltas = [delta * scale]
    for i in reversed(range(1, len(Wt))):
        # threshold_backward is ReLU's derivative in one kernel (a comparison, a bool-to-float
        # copy and a product otherwise: 7x slower).
        deltas.insert(0, torch.ops.aten.threshold_backward(torch.bmm(Wt[i].transpose(1, 2), deltas[0]),
                                                           acts[i], 0))
    if clip is not None:
        # An example's gradient of layer i is the outer product of its delta and its input, so
        # its squared norm is |delta|^2 (|input|^2 + 1 for the bias): no per-example gradients
        # are materialised.
        sq = sum(d.square().sum(1, keepdim=True) * (a.square().sum(1, keepdim=True) + 1)
                 for d, a in zip(deltas, acts))
        factor = (clip / sq.sqrt().clamp(min=1e-12)).clamp(max=1.0)
        deltas = [d * factor for d in deltas]
    grads = []
    for d, a, W in zip(deltas, acts, Wt):
        grads += [torch.bmm(d, a.transpose(1, 2)).addcmul_(decay, W), d.sum(2, keepdim=True)]
    return (data * scale).sum((1, 2)), grads


def _privacy_terms(live: list[_Schedule], count: np.ndarray, S: int, n_params: int, to):
    """DP-SGD's per-step clip thresholds (S, K, 1, 1) and gradient noise (S, K, n_params) for one
    epoch, or (None, None) when no job is private. Both apply to batch-mean gradients, hence the
    division by the batch ``count`` (S, K). A job's noise comes from its own generator, drawn for
    its own number of steps, so it does not depend on which jobs share its batch."""
    if all(p.private is None for p in live):
        return None, None
    clip = np.full((S, len(live)), np.inf, dtype=np.float32)
    noise = np.zeros((S, len(live), n_params), dtype=np.float32)
    for k, p in enumerate(live):
        if p.private is not None:
            clip[:, k] = p.private.clip_norm / count[:, k]
            std = p.private.noise_multiplier * p.private.clip_norm / count[:p.steps, k]
            noise[:p.steps, k] = p.noise_rng.standard_normal((p.steps, n_params), dtype=np.float32) * std[:, None]
    return to(clip)[:, :, None, None], to(noise)


def adam_step(theta, m1, m2, X, rows, target, scale, decay, clip, noise, move1, move2, neg_lr,
              is_weight, sizes, gathered):
    """One minibatch step of K stacked nets, in place: gradients, then Adam on ``theta``, ``m1``
    and ``m2`` (K, n_params). Returns the data loss (K,) and the squared weight norm (K,) before
    the step.

    ``rows`` (K, B) indexes the pool ``X`` (n, d); ``target``, ``scale``, ``decay`` and ``clip``
    are as in ``loss_and_grads``; ``noise`` (K, n_params) or None is added to the gradient;
    ``move1``, ``move2`` (K, 1) are the moment weights (1 - beta, or 0 once a job's epoch is
    over) and ``neg_lr`` (K, 1) minus the bias-corrected step size. ``is_weight`` (n_params,)
    marks the entries under the L2 penalty. ``gathered`` (>= K * B, d) receives the minibatch's
    rows: one buffer for all steps, because a fresh 2.5 MB block every step (K = 64 on Adult)
    comes with page faults (the gather took four times as long in a profile).
    """
    Wt, bias = _layer_views(theta, sizes)
    K, B = rows.shape
    inputs = torch.index_select(X, 0, rows.view(-1), out=gathered[:K * B]).view(K, B, -1).transpose(1, 2)
    loss, grads = loss_and_grads(Wt, bias, inputs, target, scale, decay, clip)
    sq = theta.square() @ is_weight
    g = torch.cat([gr.reshape(theta.shape[0], -1) for gr in grads], 1)
    if noise is not None:
        g += noise
    m1.lerp_(g, move1)
    m2.lerp_(g.square_(), move2)
    theta.addcdiv_(m1 * neg_lr, m2.sqrt().add_(1e-8))
    return loss, sq


def _job_labels(y: np.ndarray, jobs: list[TrainJob]) -> list[np.ndarray]:
    """Each job's pool labels (n,): its own relabelling, or the pool's."""
    labels = [y if job.labels is None else np.asarray(job.labels, np.int64) for job in jobs]
    if any(lab.shape != y.shape for lab in labels):
        raise ValueError(f"job labels must have shape {y.shape}")
    return labels


def _train_fused(recipe: MLP, X: np.ndarray, y: np.ndarray, n_classes: int,
                 jobs: list[TrainJob]) -> list[MLPModel]:
    sizes = [X.shape[1], *recipe.hidden, 1 if n_classes == 2 else n_classes]
    plans = [_Schedule(job, len(y), recipe.batch_size) for job in jobs]
    labels = _job_labels(y, jobs)
    init = [_init_params(p.rng, sizes) for p in plans]
    trained = fused.train(recipe, X, n_classes, plans, labels, init)
    return [MLPModel((W1, W2), (b1, b2), n_classes, epochs) for (W1, b1, W2, b2), epochs, _ in trained]


def _layer_views(theta: torch.Tensor, sizes: list[int]):
    """Views ``Wt[i]`` (K, fan_out, fan_in) and ``bias[i]`` (K, fan_out, 1) into the flat
    (K, n_params) buffer laid out as [Wt_0, b_0, Wt_1, b_1, ...]."""
    K = theta.shape[0]
    Wt, bias, offset = [], [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        Wt.append(theta[:, offset:offset + fan_in * fan_out].view(K, fan_out, fan_in))
        offset += fan_in * fan_out
        bias.append(theta[:, offset:offset + fan_out].view(K, fan_out, 1))
        offset += fan_out
    return Wt, bias


def _train_chunk(recipe: MLP, X: np.ndarray, y: np.ndarray, n_classes: int,
                 jobs: list[TrainJob]) -> list[MLPModel]:
    # Gradients are written out by hand and Adam runs on one flat (K, n_params) buffer: for
    # networks this small, per-op overhead, not arithmetic, is the cost. Activations are kept
    # (K, width, batch) because MKL's batched GEMM is several times faster that way round.
    # Jobs that have stopped are dropped from the batch at the end of each epoch, so a chunk
    # costs the sum of its jobs' epochs, not K times the longest.
    dev = torch.device(recipe.device)
    K, n_pool = len(jobs), len(y)
    n_out = 1 if n_classes == 2 else n_classes
    sizes = [X.shape[1], *recipe.hidden, n_out]
    plans = [_Schedule(job, n_pool, recipe.batch_size) for job in jobs]
    labels = np.stack(_job_labels(y, jobs))
    # Each job's visits (pool row, loss weight, label), padded to a common length with one
    # trailing weight-0 visit that empty minibatch slots point at: an epoch's layout is then one
    # permutation per job and three vectorised gathers.
    n_max = max(p.n for p in plans)
    # int32 rows: a gather of 4-byte entries is 3x faster than of int64 ones.
    visit_rows = np.zeros((K, n_max + 1), dtype=np.int32)
    visit_weight = np.zeros((K, n_max + 1), dtype=np.float32)
    for k, p in enumerate(plans):
        visit_rows[k, :p.n], visit_weight[k, :p.n] = p.rows, p.visit_weight
    visit_labels = np.take_along_axis(labels, visit_rows, 1)

    flat = np.stack([np.concatenate([a.T.ravel() if a.ndim == 2 else a
                                     for a in _init_params(p.rng, sizes)]) for p in plans])
    final = flat.astype(np.float32)
    theta = torch.tensor(flat, dtype=torch.float32, device=dev)
    m1 = torch.zeros_like(theta)
    m2 = torch.zeros_like(theta)
    Xt = torch.from_numpy(X).to(dev)
    alive = np.arange(K)  # original index of each row still training
    t = np.zeros(K)
    best = torch.full((K,), float("inf"), device=dev)
    stale = torch.zeros(K, dtype=torch.long, device=dev)
    epochs = np.zeros(K, dtype=np.int64)
    private = np.array([p.private is not None for p in plans])
    max_epochs = np.array([p.private.epochs if p.private else recipe.max_epochs for p in plans])
    b1, b2, decay = 0.9, 0.999, recipe.alpha
    is_weight = torch.cat([torch.full((fan_in * fan_out,), 1.0) if w else torch.zeros(fan_out)
                           for fan_in, fan_out in zip(sizes[:-1], sizes[1:]) for w in (True, False)]).to(dev)
    to = lambda a, dtype=torch.float32: torch.from_numpy(  # noqa: E731
        np.ascontiguousarray(a)).to(device=dev, dtype=dtype)
    visit_rows, visit_weight = to(visit_rows, torch.int32), to(visit_weight)
    # A single logistic output takes the label's sign (see loss_and_grads).
    visit_labels = to(2 * visit_labels - 1) if n_out == 1 else to(visit_labels, torch.long)
    gathered = torch.empty(K * max(p.batch for p in plans), X.shape[1], device=dev)

    for _ in range(int(max_epochs.max())):
        k_alive = len(alive)
        live = [plans[i] for i in alive]
        S, B = max(p.steps for p in live), max(p.batch for p in live)
        # Step s covers slot s (width B) of every job. A job's minibatches are B wide, or it has
        # fewer than B visits and one step, so its epoch simply fills its first n places.
        visit = np.full((k_alive, S * B), n_max)
        for k, p in enumerate(live):
            visit[k, :p.n] = p.rng.permutation(p.n)
        # Everything that does not depend on the parameters is prepared once per epoch, laid out
        # (S, K, ...) so that step s reads slot s of every job.
        visit = to(visit, torch.long)
        rows = torch.gather(visit_rows, 1, visit)
        by_step = lambda a: a.view(k_alive, S, B).transpose(0, 1)  # noqa: E731
        vw = by_step(torch.gather(visit_weight, 1, visit))
        count = (vw > 0).sum(2).clamp(min=1).float().cpu().numpy()  # (S, K)
        steps = np.array([p.steps for p in live])
        active = np.arange(S)[:, None] < steps[None, :]  # (S, K)
        t_step = t[None, :] + np.cumsum(active, axis=0)
        neg_lr = to(-recipe.lr * np.sqrt(1 - b2 ** t_step) / (1 - b1 ** np.maximum(t_step, 1))
                    * active)[:, :, None]
        t = t_step[-1]
        lab_t = by_step(torch.gather(visit_labels, 1, visit)).unsqueeze(2).contiguous()
        rows_t = by_step(rows).contiguous()
        count_t = to(count)
        scale_t = (vw / count_t[:, :, None]).unsqueeze(2)
        decay_t = to(decay / count)[:, :, None, None]
        act_t = to(active)
        # Moment updates: weight 1 - beta on a job's active steps, 0 (no change) after its last.
        move1 = to(np.where(active, 1 - b1, 0.0))[:, :, None]
        move2 = to(np.where(active, 1 - b2, 0.0))[:, :, None]
        clip_t, noise_t = _privacy_terms(live, count, S, theta.shape[1], to)
        # Per-step data losses and squared weight norms, reduced to the epoch loss once per epoch.
        step_loss = torch.empty(S, k_alive, device=dev)
        step_sq = torch.empty(S, k_alive, device=dev)
        for s in range(S):
            step_loss[s], step_sq[s] = adam_step(
                theta, m1, m2, Xt, rows_t[s], lab_t[s], scale_t[s], decay_t[s],
                None if clip_t is None else clip_t[s], None if noise_t is None else noise_t[s],
                move1[s], move2[s], neg_lr[s], is_weight, sizes, gathered)
        epoch_loss = ((step_loss * count_t + 0.5 * decay * step_sq) * act_t).sum(0)
        mean_loss = epoch_loss / to([p.n for p in live])
        improved = ~(mean_loss > best - recipe.tol)
        stale = torch.where(improved, 0, stale + 1)
        best = torch.minimum(best, mean_loss)
        epochs[alive] += 1
        going = ((stale <= recipe.n_iter_no_change).cpu().numpy() | private[alive]) \
            & (epochs[alive] < max_epochs[alive])
        if not going.all():
            final[alive[~going]] = theta[to(~going, torch.bool)].cpu().numpy()
            keep = to(np.flatnonzero(going), torch.long)
            theta, m1, m2 = theta[keep], m1[keep], m2[keep]
            visit_rows, visit_weight, visit_labels = visit_rows[keep], visit_weight[keep], visit_labels[keep]
            best, stale, t, alive = best[keep], stale[keep], t[going], alive[going]
        if not len(alive):
            break
    final[alive] = theta.cpu().numpy()

    Wt, bias = _layer_views(torch.from_numpy(final), sizes)
    W_out = [W.transpose(1, 2).numpy() for W in Wt]
    b_out = [b[:, :, 0].numpy() for b in bias]
    return [MLPModel(tuple(np.ascontiguousarray(W[k]) for W in W_out), tuple(b[k].copy() for b in b_out),
                     n_classes, int(epochs[k])) for k in range(K)]


MODELS.add("mlp", MLP)


@MODELS.register("logreg")
def logistic_regression(**params) -> MLP:
    """Logistic (softmax) regression: the MLP recipe with no hidden layer."""
    return MLP(hidden=(), **params)
