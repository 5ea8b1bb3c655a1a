"""Fitting the HOG + PCA + SVM baseline with scikit-learn, into the arrays of
:class:`tumortrace.baselines.HogSvm`.

One fold: HOG of every training volume (:func:`tumortrace.baselines.hog_slices`, the same torch
code inference runs) -> PCA (at most :data:`PCA_COMPONENTS` components, fitted on the training
part) -> standardisation -> for each class, an RBF ``SVC`` of that class against the rest
(``class_weight="balanced"``, ``gamma`` = 1 / components, scikit-learn's ``"scale"`` on
standardised features). ``C`` is chosen from :data:`C_GRID` by validation macro-F1 (ties: the
lower validation loss), as the networks choose their epoch. Probabilities: the softmax of the three
decision values divided by one temperature, fitted on the validation part by minimising its
negative log-likelihood (temperature scaling; decision values on the training part are
over-confident, so they are not used for it). The result is a state dict of plain arrays, stored
as safetensors like any weights: nothing is pickled.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.svm import SVC
from torch.nn import functional as F

from tumortrace import metrics
from tumortrace.baselines import HogSvm
from tumortrace.config import CLASSES

PCA_COMPONENTS = 50
"""Most principal components kept (fewer when the training part has fewer cases)."""
C_GRID: tuple[float, ...] = (0.1, 1.0, 10.0)
"""SVM regularisation values tried; the validation part picks one."""
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
"""Temperatures tried for the probabilities (log-spaced)."""


def _fit_svms(z: np.ndarray, y: np.ndarray, c: float, gamma: float, seed: int) -> list[SVC]:
    """One RBF SVC per class (that class against the rest) on standardised components."""
    return [
        SVC(C=c, kernel="rbf", gamma=gamma, class_weight="balanced", random_state=seed).fit(
            z, (y == k).astype(int)
        )
        for k in range(len(CLASSES))
    ]


def _state(
    pca: PCA, mean: np.ndarray, std: np.ndarray, svms: Sequence[SVC], gamma: float, t: float
) -> dict[str, torch.Tensor]:
    """The :class:`HogSvm` state dict of a fitted pipeline."""

    def f32(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32)).contiguous()

    state = {
        "pca_mean": f32(pca.mean_),
        "pca_components": f32(pca.components_),
        "scale_mean": f32(mean),
        "scale_std": f32(std),
        "intercept": f32([s.intercept_[0] for s in svms]),
        "gamma": f32(gamma).reshape(()),
        "temperature": f32(t).reshape(()),
    }
    for k, svm in enumerate(svms):
        state[f"support_{k}"] = f32(svm.support_vectors_)
        state[f"dual_{k}"] = f32(svm.dual_coef_[0])
    return state


def _load(model: HogSvm, state: dict[str, torch.Tensor]) -> None:
    """Puts fitted arrays into ``model`` (its input reference, when it has one, is kept)."""
    model.adopt_shapes(state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"stem.input_reference"}, (missing, unexpected)


def _temperature(decision: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``softmax(decision / T)``."""
    d = torch.as_tensor(decision, dtype=torch.float64)
    target = torch.as_tensor(y, dtype=torch.int64)
    losses = [F.cross_entropy(d / t, target).item() for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def fit_hog_svm(
    model: HogSvm,
    train_x: torch.Tensor,
    train_y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    seed: int = 0,
) -> dict[str, object]:
    """Fits ``model`` (in place) on one fold's training part; the validation part picks ``C`` and
    the temperature.

    Args:
        model: a :class:`HogSvm` (with its input reference already set, if any).
        train_x, val_x: ``(N, 1, D, H, W)`` float32 un-augmented model inputs.
        train_y, val_y: ``(N,)`` label indices in :data:`CLASSES` order.
        seed: the SVMs' random state.

    Returns:
        ``{"c", "temperature", "components", "val_macro_f1", "val_loss", "seconds"}``.
    """
    start = time.perf_counter()
    with torch.no_grad():
        feats = model.features(train_x).double().numpy()
        val_feats = model.features(val_x).double().numpy()
    k = max(1, min(PCA_COMPONENTS, len(train_y) - 1, feats.shape[1]))
    pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit(feats)
    z = pca.transform(feats)
    mean, std = z.mean(0), z.std(0)
    std[std == 0] = 1.0
    gamma = 1.0 / k
    best: tuple | None = None
    for c in C_GRID:
        svms = _fit_svms((z - mean) / std, train_y, c, gamma, seed)
        _load(model, _state(pca, mean, std, svms, gamma, 1.0))
        with torch.no_grad():
            decision = model.decision(model.project(torch.as_tensor(val_feats))).numpy()
        t = _temperature(decision, val_y)
        probs = torch.softmax(torch.as_tensor(decision) / t, dim=1).numpy()
        score = metrics.compute_metrics(val_y, probs, classes=CLASSES)
        loss = F.cross_entropy(torch.as_tensor(decision) / t, torch.as_tensor(val_y)).item()
        if best is None or (score.macro_f1, -loss) > (best[0], -best[1]):
            best = (score.macro_f1, loss, c, t, _state(pca, mean, std, svms, gamma, t))
    f1, loss, c, t, state = best  # type: ignore[misc]
    _load(model, state)
    return {
        "c": c,
        "temperature": t,
        "components": k,
        "val_macro_f1": float(f1),
        "val_loss": float(loss),
        "seconds": time.perf_counter() - start,
    }
