"""Frechet distance between two sets of feature vectors, each summarised by a Gaussian.

    d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})

(Dowson & Landau, 1982; used on Inception features as FID by Heusel et al., 2017). The matrix
square root goes through two symmetric eigen-decompositions, which stays real and stable for the
rank-deficient covariances that small samples give: tr((A B A)^{1/2}) with A = S_1^{1/2} is the sum
of the square roots of the eigenvalues of the symmetric PSD matrix A S_2 A, and equals
tr((S_1 S_2)^{1/2}).

In strata the features come from a classifier trained on the same data set (strata/metrics/judge.py),
not from Inception, so the figures are not comparable with published FIDs.
"""

from __future__ import annotations

import numpy as np
import torch


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), in float64."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need a (N >= 2, D) feature matrix, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, s1) and N(mu2, s2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"mismatched statistics: means {mu1.shape} vs {mu2.shape}, covariances {s1.shape} vs {s2.shape}")
    a = _psd_sqrt(s1)
    cross = np.linalg.eigvalsh(a @ s2 @ a)  # eigenvalues of S1^1/2 S2 S1^1/2
    tr_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()  # tr((S1^1/2 S2 S1^1/2)^1/2)
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(d, 0.0)


def frechet_from_features(a, b) -> float:
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
