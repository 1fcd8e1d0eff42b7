"""Linear probe: multinomial logistic regression on standardised frozen features.

Protocol:
1. Carve a validation part out of the TRAIN split (`stratified_split`, seeded).
2. For each candidate inverse regularisation strength C, fit StandardScaler + LogisticRegression on
   the rest of the train split and measure top-1 accuracy on the validation part
   (`select_regularisation`). The best C wins; equal scores go to the smallest C (the strongest
   regularisation, i.e. the simplest model that does as well).
3. Refit scaler + classifier with that C on the whole train split and report top-1 / top-5 accuracy on
   the test split (`linear_probe`). The test split is used for nothing else.

The classifier is scikit-learn's `LogisticRegression(solver="lbfgs")` with an L2 penalty, which is the
multinomial (softmax) model whenever there are 3 or more classes; with exactly 2 classes it is the
equivalent binary logistic model. `solver="torch"` (`evaluation.probe.solver`) fits the same model
(the same objective, C, split, scaler and selection rule) with full-batch L-BFGS in torch, in float64,
on `device` (a GPU when there is one): the path for Kinetics-size feature sets, where scikit-learn
takes days (docs/benchmarks.md). Both minimise a strictly convex objective, so they agree up to
where each stops iterating; scikit-learn stays the reference and the default.

Usage::

    metrics = linear_probe(train_features, train_labels, test_features, test_labels, seed=0)
    metrics["top1"], metrics["top5"], metrics["C"], metrics["val_scores"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vididi.utils import VididiError

DEFAULT_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_MAX_ITER = 1000


def stratified_split(labels, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (fit, validation), class by class.

    Kept instead of `train_test_split(stratify=)`: that one refuses classes with a single sample and
    rounds per class differently, which would change the chosen C and so every published probe number.

    Rule: a class with n >= 2 samples sends round(val_fraction * n) of them, but at least 1 and at
    most n - 1, to validation, chosen by a seeded permutation; a class with a single sample stays
    entirely in the fit part (it cannot be both fitted and validated). Classes are visited in sorted
    order with one `numpy.random.default_rng(seed)`, so the split depends only on (labels, fraction,
    seed). Both index arrays are returned sorted.
    """
    labels = np.asarray(labels)
    if not 0.0 < val_fraction < 1.0:
        raise VididiError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n = members.size
        n_val = 0 if n < 2 else min(max(math.floor(val_fraction * n + 0.5), 1), n - 1)
        shuffled = rng.permutation(members)
        val.append(shuffled[:n_val])
        fit.append(shuffled[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def grouped_split(groups, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (fit, validation) by GROUP (e.g. the video a window comes from):
    round(val_fraction * n_groups) groups, at least 1 and at most n_groups - 1, chosen by a seeded
    permutation of the sorted group names, send all their samples to validation. No group is on
    both sides. Both index arrays are returned sorted."""
    groups = np.asarray(groups)
    if not 0.0 < val_fraction < 1.0:
        raise VididiError(f"val_fraction must be in (0, 1), got {val_fraction}")
    names = np.unique(groups)
    if names.size < 2:
        raise VididiError(f"a split by group needs at least 2 groups, got {names.size}")
    n_val = min(max(math.floor(val_fraction * names.size + 0.5), 1), names.size - 1)
    held_out = np.random.default_rng(seed).permutation(names)[:n_val]
    is_val = np.isin(groups, held_out)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def select_regularisation(
    train_x,
    train_y,
    Cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    groups=None,
    solver: str = "sklearn",
    device=None,
) -> tuple[float, dict[float, float]]:
    """Choose C on a validation part of the train split; returns (best_C, {C: validation top-1}).

    One stratified hold-out, not `LogisticRegressionCV` (k-fold, other numbers); `GridSearchCV` with a
    `PredefinedSplit` would compute the same thing in more lines and hide the tie rule (smallest C).

    Sees only train data. Ties in validation accuracy go to the smallest C. The validation part is
    stratified by class (`stratified_split`), or, with `groups` (one name per sample, e.g. its
    video), made of whole groups (`grouped_split`), so correlated samples never straddle it.
    """
    x, y = _check_xy(train_x, train_y, "train")
    Cs = _check_cs(Cs)
    if groups is None:
        fit_idx, val_idx = stratified_split(y, val_fraction, seed)
    else:
        fit_idx, val_idx = grouped_split(groups, val_fraction, seed)
    if val_idx.size == 0:
        raise VididiError(
            "cannot choose the regularisation: no class has 2 or more training samples to validate on"
        )
    if np.unique(y[fit_idx]).size < 2:
        raise VididiError("cannot choose the regularisation: the fit part holds fewer than 2 classes")
    scaler = StandardScaler().fit(x[fit_idx])
    fit_x, val_x = scaler.transform(x[fit_idx]), scaler.transform(x[val_idx])
    val_scores: dict[float, float] = {}
    for C in Cs:
        clf, _ = _fit_classifier(fit_x, y[fit_idx], C, max_iter, solver, device)
        val_scores[C] = float(np.mean(clf.predict(val_x) == y[val_idx]))
    best_score = max(val_scores.values())
    best_C = min(C for C, score in val_scores.items() if score == best_score)
    return best_C, val_scores


def _select_and_fit(x, y, Cs, val_fraction, seed, max_iter, solver="sklearn", device=None):
    """C chosen on a validation part of the train split, then the final fit on all of it (shared by
    `linear_probe` and `fit_probe`, so the Grad-CAM target is the classifier the probe evaluates):
    (best_C, validation scores, scaler, classifier, converged)."""
    best_C, val_scores = select_regularisation(x, y, Cs, val_fraction, seed, max_iter, solver=solver, device=device)
    scaler = StandardScaler().fit(x)
    clf, converged = _fit_classifier(scaler.transform(x), y, best_C, max_iter, solver, device)
    return best_C, val_scores, scaler, clf, converged


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    Cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    solver: str = "sklearn",
    device=None,
) -> dict:
    """Linear-probe accuracy of frozen features (protocol in the module docstring).

    Returns a JSON-ready dict: top1, top5, top5_k (the k used for "top-5": min(5, n_classes)), C,
    val_scores ({C: validation top-1}), n_train, n_test, n_classes (classes seen in training),
    n_test_unseen_class (test samples whose class has no training sample: they count as errors, as
    the classifier cannot output their class), final_fit_converged (False when lbfgs stopped at
    max_iter; scikit-learn also warns with a ConvergenceWarning, for the selection fits too).
    """
    x, y = _check_xy(train_x, train_y, "train")
    tx, ty = _check_xy(test_x, test_y, "test")
    if tx.shape[1] != x.shape[1]:
        raise VididiError(f"train and test feature sizes differ: {x.shape} vs {tx.shape}")
    if (y.dtype.kind in "biuf") != (ty.dtype.kind in "biuf"):
        raise VididiError(
            f"train_y ({y.dtype}) and test_y ({ty.dtype}) must both be numbers or both strings"
        )
    if np.unique(y).size < 2:
        raise VididiError(
            f"the linear probe needs at least 2 classes in the train split, got {np.unique(y).size}"
        )

    best_C, val_scores, scaler, clf, converged = _select_and_fit(x, y, Cs, val_fraction, seed, max_iter, solver, device)
    probabilities = clf.predict_proba(scaler.transform(tx))
    top5_k = min(5, clf.classes_.size)
    return {
        "top1": top_k_accuracy(probabilities, clf.classes_, ty, 1),
        "top5": top_k_accuracy(probabilities, clf.classes_, ty, top5_k),
        "top5_k": top5_k,
        "C": best_C,
        "val_scores": val_scores,
        "n_train": int(x.shape[0]),
        "n_test": int(tx.shape[0]),
        "n_classes": int(clf.classes_.size),
        "n_test_unseen_class": int(np.sum(~np.isin(ty, clf.classes_))),
        "final_fit_converged": converged,
    }


@dataclass(frozen=True)
class ProbeModel:
    """A fitted linear probe as plain arrays: logits = ((z - mean) / scale) @ coef.T + intercept.

    `classes` holds the label of each logit column. A 2-class scikit-learn model has one row of
    coefficients (the log-odds of classes[1]); it is stored as the two rows (-w, w) / 2 and
    (-b, b) / 2, whose softmax is the same model.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    C: float

    def logits(self, z):
        """Class logits (B, n_classes) of features `z` (B, D): a torch tensor keeps its graph."""
        import torch

        if isinstance(z, torch.Tensor):
            as_t = lambda a: torch.as_tensor(a, dtype=z.dtype, device=z.device)  # noqa: E731
            return ((z - as_t(self.mean)) / as_t(self.scale)) @ as_t(self.coef).T + as_t(self.intercept)
        return ((np.asarray(z, np.float64) - self.mean) / self.scale) @ self.coef.T + self.intercept


def fit_probe(
    train_x,
    train_y,
    Cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    solver: str = "sklearn",
    device=None,
) -> ProbeModel:
    """The classifier `linear_probe` evaluates, as a `ProbeModel`: the same C selection and the same
    final fit on the whole train split (deterministic), for uses beyond accuracy (Grad-CAM targets)."""
    x, y = _check_xy(train_x, train_y, "train")
    best_C, _, scaler, clf, _ = _select_and_fit(x, y, Cs, val_fraction, seed, max_iter, solver, device)
    coef, intercept = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    if clf.classes_.size == 2:
        coef, intercept = np.vstack([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    return ProbeModel(scaler.mean_.copy(), scaler.scale_.copy(), coef, intercept, clf.classes_.copy(), best_C)


def top_k_accuracy(probabilities, classes, labels, k: int) -> float:
    """Fraction of rows whose true label is among the k classes of highest probability.

    Kept instead of `sklearn.metrics.top_k_accuracy_score`: that one refuses test labels the classifier
    never saw (here they count as misses) and breaks ties towards the last column, not the first.

    `probabilities` is (n, n_classes) with columns in the order of `classes`. k is clamped to the
    number of classes. Equal probabilities rank by column order (stable sort), so ties are
    deterministic. A label that is not in `classes` is never a hit.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = np.asarray(classes)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or probabilities.shape != (labels.shape[0], classes.shape[0]):
        raise VididiError(
            f"probabilities must have shape (len(labels), len(classes)) = "
            f"({labels.shape[0]}, {classes.shape[0]}), got {probabilities.shape}"
        )
    if k < 1:
        raise VididiError(f"k must be >= 1, got {k}")
    if labels.shape[0] == 0:
        raise VididiError("top-k accuracy needs at least one sample")
    k = min(k, classes.shape[0])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean((classes[top] == labels[:, None]).any(axis=1)))


def _fit_classifier(
    x: np.ndarray, y: np.ndarray, C: float, max_iter: int, solver: str = "sklearn", device=None
) -> tuple[LogisticRegression, bool]:
    """L2 logistic regression (softmax for >= 3 classes); also says whether the solver converged."""
    if solver == "torch":
        clf = TorchLogisticRegression(C=C, max_iter=max_iter, device=device).fit(x, y)
        return clf, clf.converged
    if solver != "sklearn":
        raise VididiError(f"unknown probe solver {solver!r}; choose sklearn or torch")
    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter).fit(x, y)
    return clf, bool(np.max(clf.n_iter_) < max_iter)


class TorchLogisticRegression:
    """scikit-learn's L2 `LogisticRegression` fitted with full-batch L-BFGS in torch (float64).

    Objective (scikit-learn's, divided by C * n): mean cross-entropy of softmax(x W^T + b) +
    ||W||^2 / (2 C n), the intercept b unpenalised. With 2 classes scikit-learn fits the binary model
    w = W_1 - W_0, whose penalty ||w||^2 / 2 is twice the softmax model's minimum ||W||^2 / 2 for the
    same w (W_1 = -W_0 = w / 2): the softmax fit with C / 2 is that binary model. Stops as
    scikit-learn's lbfgs does: when the largest gradient entry of this objective is below `tol`
    (scikit-learn's default, 1e-4), or after `max_iter` iterations (then `converged` is False). Exposes what the probe uses: classes_, coef_,
    intercept_, n_iter_, predict, predict_proba.
    """

    def __init__(self, C: float, max_iter: int = DEFAULT_MAX_ITER, tol: float = 1e-4, device=None):
        self.C, self.max_iter, self.tol = C, max_iter, tol
        self.device = device

    def fit(self, x: np.ndarray, y: np.ndarray) -> "TorchLogisticRegression":
        import torch

        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.classes_, codes = np.unique(y, return_inverse=True)
        k = self.classes_.size
        C = self.C / 2 if k == 2 else self.C
        xt = torch.as_tensor(np.asarray(x, np.float64), device=device)
        yt = torch.as_tensor(codes, device=device)
        n, d = xt.shape
        W = torch.zeros((k, d), dtype=torch.float64, device=device, requires_grad=True)
        b = torch.zeros(k, dtype=torch.float64, device=device, requires_grad=True)
        optimizer = torch.optim.LBFGS([W, b], lr=1, max_iter=self.max_iter, max_eval=4 * self.max_iter,
                                      tolerance_grad=self.tol, tolerance_change=0, history_size=10,
                                      line_search_fn="strong_wolfe")  # fmt: skip

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ W.T + b, yt) + W.square().sum() / (2 * C * n)
            loss.backward()
            return loss

        optimizer.step(closure)
        state = optimizer.state[optimizer._params[0]]
        self.n_iter_ = np.array([int(state.get("n_iter", 0))])
        self.converged = bool(self.n_iter_[0] < self.max_iter)
        W, b = W.detach().cpu().numpy(), b.detach().cpu().numpy()
        if k == 2:  # scikit-learn's binary layout: one row, the log-odds of classes_[1]
            W, b = W[1:] - W[:1], b[1:] - b[:1]
        self.coef_, self.intercept_ = W, b
        return self

    def decision_function(self, x) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.coef_.T + self.intercept_

    def predict_proba(self, x) -> np.ndarray:
        z = self.decision_function(x)
        if self.classes_.size == 2:
            z = np.hstack([np.zeros_like(z), z])
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, x) -> np.ndarray:
        z = self.decision_function(x)
        if self.classes_.size == 2:
            return self.classes_[(z[:, 0] > 0).astype(int)]
        return self.classes_[np.argmax(z, axis=1)]


def _check_xy(features, labels, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise VididiError(f"{split} features must be a numeric array: {err}") from None
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise VididiError(
            f"{split} features must be a non-empty 2-D array (samples, dims), got {x.shape}"
        )
    if y.shape != (x.shape[0],):
        raise VididiError(f"{split} labels must have shape ({x.shape[0]},), got {y.shape}")
    if not np.isfinite(x).all():
        raise VididiError(f"{split} features contain NaN or inf")
    return x, y


def _check_cs(Cs: Sequence[float]) -> tuple[float, ...]:
    Cs = tuple(float(C) for C in Cs)
    if not Cs or not all(math.isfinite(C) and C > 0 for C in Cs):
        raise VididiError(f"Cs must be a non-empty list of positive finite numbers, got {Cs}")
    if len(set(Cs)) != len(Cs):
        raise VididiError(f"Cs has duplicates: {Cs}")
    return Cs
