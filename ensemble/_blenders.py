"""Blenders with the scikit-learn estimator contract. Torch-free.

``__init__`` only stores arguments; ``fit(oof_logits, y)`` learns (state ends in ``_``);
``predict_proba(logits)`` applies. Logits are ``[members, rows, labels]`` arrays. Weights, temperatures
and stackers are fit on out-of-fold logits only; :func:`ensemble.honest_oof` scores them by nested CV.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError

from kfold.core.errors import ConfigError, unknown_name
from kfold.core.metrics import METRICS, metric_fn, softmax

_EPS = 1e-12


def _softmax3(logits: np.ndarray, temperatures: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the label axis of [M, n, C] logits (each member divided by its temperature)."""
    z = np.asarray(logits, dtype=np.float64)
    if temperatures is not None:
        z = z / temperatures[:, None, None]
    z = z - z.max(axis=2, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=2, keepdims=True)


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the gold labels."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], _EPS, None))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017)."""
    z = np.asarray(logits, dtype=np.float64)

    def nll(log_t: float) -> float:
        return log_loss(y, softmax(z / np.exp(log_t)))

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4}).x))


class Blender(BaseEstimator):
    """Base class: input checks, the fitted check and the objective (a metric or log-loss)."""

    def _check_logits(self, logits, fitting: bool) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 3:
            raise ConfigError(f"{type(self).__name__}: logits of shape {z.shape}, expected [members, rows, labels]")
        if not np.isfinite(z).all():
            raise ConfigError(f"{type(self).__name__}: logits contain NaN or infinite values")
        if not fitting:
            self._check_fitted()
            if z.shape[0] != self.n_members_ or z.shape[2] != self.n_labels_:
                raise ConfigError(f"{type(self).__name__}: fitted on {self.n_members_} members x {self.n_labels_} labels, "
                                  f"got {z.shape[0]} x {z.shape[2]}")
        return z

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_members_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(oof_logits, y) first")

    def _start(self, logits, y) -> tuple[np.ndarray, np.ndarray]:
        z = self._check_logits(logits, fitting=True)
        y = np.asarray(y, dtype=np.int64)
        if y.shape != (z.shape[1],):
            raise ConfigError(f"{type(self).__name__}: y of shape {y.shape}, expected ({z.shape[1]},)")
        self.n_members_, self.n_labels_ = z.shape[0], z.shape[2]
        return z, y

    def _objective(self) -> Callable[[np.ndarray, np.ndarray], float]:
        """Higher is better: the metric, or minus the log-loss."""
        metric = getattr(self, "metric", "logloss")
        if metric == "logloss":
            return lambda y, p: -log_loss(y, p)
        if metric not in METRICS:
            raise unknown_name("metric", metric, ("logloss",) + METRICS)
        names = self.label_names or [str(i) for i in range(self.n_labels_)]
        return metric_fn(metric, names, self.no_relation)

    def member_weights(self) -> np.ndarray:
        """Each member's share of the blend (uniform unless the method learns weights)."""
        self._check_fitted()
        return np.full(self.n_members_, 1.0 / self.n_members_)

    def fitted_params(self) -> dict:
        """What the fit learned, as JSON values: what a blend's manifest keeps, for the fit on all OOF rows and for
        each fold's fit without that fold (:func:`ensemble.fold_fits`). :meth:`with_fitted` makes a blender of it."""
        self._check_fitted()
        return {"n_members": int(self.n_members_), "n_labels": int(self.n_labels_), **self._learned()}

    def with_fitted(self, params: dict) -> "Blender":
        """A copy of this blender holding the fitted parameters ``params`` (from :meth:`fitted_params`): it
        predicts exactly as the blender they came from."""
        out = clone(self)
        out.n_members_, out.n_labels_ = int(params["n_members"]), int(params["n_labels"])
        out._restore(params)
        return out

    def _learned(self) -> dict:
        return {}  # a method that learns nothing but the shapes

    def _restore(self, params: dict) -> None:
        pass

    def fit(self, logits, y):  # pragma: no cover - overridden
        raise NotImplementedError

    def predict_proba(self, logits) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def predict(self, logits) -> np.ndarray:
        """Label indices."""
        return self.predict_proba(logits).argmax(1)


class SoftVote(Blender):
    """Mean of the members' probabilities; with ``temperature=True`` each member's logits are first
    divided by a temperature fitted on that member's OOF logits."""

    def __init__(self, temperature: bool = False):
        self.temperature = temperature

    def fit(self, logits, y):
        z, y = self._start(logits, y)
        self.temperatures_ = np.array([fit_temperature(m, y) for m in z]) if self.temperature else np.ones(len(z))
        return self

    def predict_proba(self, logits) -> np.ndarray:
        z = self._check_logits(logits, fitting=False)
        return _softmax3(z, self.temperatures_).mean(axis=0)

    def _learned(self) -> dict:
        return {"temperatures": self.temperatures_.tolist()}

    def _restore(self, params: dict) -> None:
        self.temperatures_ = np.asarray(params["temperatures"], dtype=np.float64)


class _WeightedMean(Blender):
    """Base of the blenders whose prediction is a weighted mean of probabilities (``weights_``)."""

    def member_weights(self) -> np.ndarray:
        self._check_fitted()
        return self.weights_

    def predict_proba(self, logits) -> np.ndarray:
        z = self._check_logits(logits, fitting=False)
        return np.tensordot(self.weights_, _softmax3(z), axes=1)

    def _learned(self) -> dict:
        return {"weights": self.weights_.tolist()}

    def _restore(self, params: dict) -> None:
        self.weights_ = np.asarray(params["weights"], dtype=np.float64)


class WeightedBlend(_WeightedMean):
    """Weighted mean of probabilities; weights on the simplex fitted on OOF.

    ``metric="logloss"``: minimise log-loss (L-BFGS on softmax-parametrised weights). Any other metric:
    start there, then coordinate search on each weight to maximise the metric.
    """

    def __init__(self, metric: str = "logloss", label_names=None, no_relation=None, rounds: int = 3):
        self.metric = metric
        self.label_names = label_names
        self.no_relation = no_relation
        self.rounds = rounds

    def fit(self, logits, y):
        z, y = self._start(logits, y)
        probs = _softmax3(z)
        gold = probs[:, np.arange(len(y)), y]  # [M, n]

        def loss_grad(v):
            w = softmax(v[None])[0]
            p = np.clip(w @ gold, _EPS, None)
            g = -(gold / p).mean(axis=1)
            return -np.mean(np.log(p)), w * (g - w @ g)

        res = minimize(loss_grad, np.zeros(len(z)), jac=True, method="L-BFGS-B")
        w = softmax(res.x[None])[0]
        if self.metric != "logloss":
            objective = self._objective()
            best = objective(y, np.tensordot(w, probs, axes=1))
            for _ in range(self.rounds):
                improved = False
                for m in range(len(w)):
                    for value in (0.0, w[m] * 0.5, w[m] * 0.8, w[m] * 1.25, w[m] * 2.0, max(w[m] * 4.0, 1.0 / len(w))):
                        cand = w.copy()
                        cand[m] = value
                        if cand.sum() <= 0:
                            continue
                        cand /= cand.sum()
                        s = objective(y, np.tensordot(cand, probs, axes=1))
                        if s > best + 1e-12:
                            best, w, improved = s, cand, True
                if not improved:
                    break
        self.weights_ = w
        return self


class CaruanaSelection(_WeightedMean):
    """Greedy forward selection with replacement (Caruana et al. 2004, as AutoGluon's weighted ensemble).

    Each step adds the member whose inclusion gives the best objective for the running average; after
    ``n_iter`` steps the best prefix is kept and the weights are the selection counts.
    """

    def __init__(self, n_iter: int = 50, metric: str = "logloss", label_names=None, no_relation=None):
        self.n_iter = n_iter
        self.metric = metric
        self.label_names = label_names
        self.no_relation = no_relation

    def fit(self, logits, y):
        z, y = self._start(logits, y)
        probs = _softmax3(z)
        objective = self._objective()
        running = np.zeros_like(probs[0])
        counts = np.zeros(len(z))
        best_score, best_counts, self.history_ = -np.inf, None, []
        for step in range(1, self.n_iter + 1):
            scores = [objective(y, (running + p) / step) for p in probs]
            pick = int(np.argmax(scores))  # ties: the first member
            running += probs[pick]
            counts[pick] += 1
            self.history_.append((pick, float(scores[pick])))
            if scores[pick] > best_score + 1e-12:
                best_score, best_counts = scores[pick], counts.copy()
        self.weights_ = best_counts / best_counts.sum()
        return self


class RankAverage(Blender):
    """Average of per-label ranks (each member's probabilities ranked over the rows being predicted),
    normalised per row. Learns nothing but the member count. Ranking each label's column over rows drops the
    class priors, so it suits ranking metrics (AUPRC) better than accuracy."""

    def fit(self, logits, y):
        self._start(logits, y)
        return self

    def predict_proba(self, logits) -> np.ndarray:
        from scipy.stats import rankdata

        z = self._check_logits(logits, fitting=False)
        ranks = rankdata(_softmax3(z), axis=1) / z.shape[1]
        mean = ranks.mean(axis=0)
        return mean / mean.sum(axis=1, keepdims=True)


class HardVote(Blender):
    """Majority vote of the members' argmax labels; ties broken by the mean probabilities.

    Probabilities are the vote shares with the soft mean added below one vote, renormalised.
    """

    def fit(self, logits, y):
        self._start(logits, y)
        return self

    def predict_proba(self, logits) -> np.ndarray:
        z = self._check_logits(logits, fitting=False)
        probs = _softmax3(z)
        votes = np.zeros(probs.shape[1:])
        for p in probs:
            votes[np.arange(len(p)), p.argmax(1)] += 1
        score = votes + 0.999 * probs.mean(axis=0)  # the soft mean (< 1) only decides ties
        return score / score.sum(axis=1, keepdims=True)


class Stacking(Blender):
    """Multinomial logistic regression on the members' OOF features, regularisation chosen by inner CV.

    ``features``: ``logit`` (row-centred logits, i.e. log-probabilities up to a constant) or ``prob``.
    """

    def __init__(self, features: str = "logit", Cs=(0.01, 0.1, 1.0), cv: int = 3, max_iter: int = 300,
                 random_state: int = 0):
        self.features = features
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.random_state = random_state

    def _x(self, z: np.ndarray) -> np.ndarray:
        if self.features not in ("logit", "prob"):
            raise unknown_name("stacking features", self.features, ("logit", "prob"))
        f = z - z.mean(axis=2, keepdims=True) if self.features == "logit" else _softmax3(z)
        return np.concatenate(list(f), axis=1)

    def fit(self, logits, y):
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import KFold, StratifiedKFold

        z, y = self._start(logits, y)
        x = self._x(z)
        counts = np.bincount(y)
        present = counts[counts > 0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter and rare-class notices from the inner CV
            if len(present) < 2:
                self.model_ = LogisticRegression(C=1.0).fit(x, y) if len(present) > 1 else None
            else:
                splitter = (StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
                            if present.min() >= self.cv else KFold(self.cv, shuffle=True, random_state=self.random_state))
                self.model_ = LogisticRegressionCV(Cs=list(self.Cs), cv=splitter, scoring="neg_log_loss",
                                                   max_iter=self.max_iter, tol=1e-3).fit(x, y)
        self.classes_ = np.unique(y)
        self.C_ = float(np.ravel(self.model_.C_)[0]) if self.model_ is not None and hasattr(self.model_, "C_") else 1.0
        return self

    def _learned(self) -> dict:
        model = None if self.model_ is None else {
            "coef": self.model_.coef_.tolist(), "intercept": self.model_.intercept_.tolist(),
            "classes": self.model_.classes_.tolist()}
        return {"classes": self.classes_.tolist(), "C": self.C_, "model": model}

    def _restore(self, params: dict) -> None:
        from sklearn.linear_model import LogisticRegression

        self.classes_, self.C_, self.model_ = np.asarray(params["classes"], dtype=np.int64), float(params["C"]), None
        if params["model"] is not None:  # a logistic regression predicts from these alone
            self.model_ = LogisticRegression(C=self.C_)
            self.model_.coef_ = np.asarray(params["model"]["coef"], dtype=np.float64)
            self.model_.intercept_ = np.asarray(params["model"]["intercept"], dtype=np.float64)
            self.model_.classes_ = np.asarray(params["model"]["classes"], dtype=np.int64)
            self.model_.n_features_in_ = self.model_.coef_.shape[1]

    def member_weights(self) -> np.ndarray:
        """Share of the absolute coefficients that falls on each member's features."""
        self._check_fitted()
        if self.model_ is None:
            return super().member_weights()
        coef = np.abs(self.model_.coef_).reshape(self.model_.coef_.shape[0], self.n_members_, self.n_labels_)
        mass = coef.sum(axis=(0, 2))
        return mass / mass.sum()

    def predict_proba(self, logits) -> np.ndarray:
        z = self._check_logits(logits, fitting=False)
        out = np.zeros((z.shape[1], self.n_labels_))
        if self.model_ is None:
            out[:, self.classes_[0]] = 1.0
            return out
        out[:, self.model_.classes_] = self.model_.predict_proba(self._x(z))
        return out


METHODS: dict[str, Callable[..., Blender]] = {
    "soft": SoftVote, "weighted": WeightedBlend, "caruana": CaruanaSelection, "rank": RankAverage,
    "hard": HardVote, "stack": Stacking,
}


def make_blender(method: str, *, metric: str = "logloss", label_names=None, no_relation=None,
                 temperature: bool = False) -> Blender:
    """A blender by method name, with the objective where the method has one.

    Example
    -------
    >>> make_blender("caruana", metric="accuracy")
    CaruanaSelection(metric='accuracy')
    """
    if method not in METHODS:
        raise unknown_name("method", method, METHODS)
    if method == "soft":
        return SoftVote(temperature=temperature)
    if method in ("weighted", "caruana"):
        return METHODS[method](metric=metric, label_names=label_names, no_relation=no_relation)
    return METHODS[method]()
