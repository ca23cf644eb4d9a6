"""The numbers that say whether a model trains healthily (docs/maths.md §8): how long a chain's memory lasts,
how generated samples spread over the classes of the data, and how much class information the discrete
codes carry. Pure functions of arrays; the callbacks in ``ebmflow.callbacks`` compute their inputs and
log them."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "class_coverage",
    "class_shares",
    "code_nmi",
    "gap_beyond_noise",
    "integrated_autocorrelation_time",
    "moment_gap",
]

SOKAL_WINDOW = 5.0  # the window M is the smallest with M ≥ 5 τ(M) (Sokal 1997)


def integrated_autocorrelation_time(series: Tensor) -> float:
    """τ = 1 + 2 Σ_{t=1}^{M} ρ(t) of a quantity recorded along parallel chains, series: (chains, T).

    The autocovariance is averaged over chains (each centred on its own mean) and computed by FFT;
    M is Sokal's self-consistent window. τ is in units of the recording interval: 1 for independent
    draws, (1 + φ)/(1 − φ) for an AR(1) process with coefficient φ. When no window fits in T (the chains
    move too slowly to tell), the value at M = T − 1 is returned, a lower bound.
    """
    x = series.double()
    x = x - x.mean(1, keepdim=True)
    length = x.shape[1]
    spectrum = torch.fft.rfft(x, n=2 * length)
    autocovariance = torch.fft.irfft(spectrum.abs() ** 2, n=2 * length)[:, :length].mean(0)
    if autocovariance[0] <= 0:
        return 1.0  # a constant series: nothing to correlate
    rho = autocovariance / autocovariance[0]
    tau = 1 + 2 * torch.cumsum(rho[1:], 0)
    windows = torch.arange(1, length, dtype=tau.dtype, device=tau.device)
    fits = (windows >= SOKAL_WINDOW * tau).nonzero()
    return float(tau[fits[0, 0]] if len(fits) else tau[-1])


def class_shares(classes: Tensor, num_classes: int) -> Tensor:
    """Each class's share of ``classes`` (class indices 0 … ``num_classes`` − 1): (num_classes,), float64."""
    counts = torch.bincount(classes.flatten().long(), minlength=num_classes).double()
    return counts / counts.sum()


def class_coverage(
    sample_classes: Tensor, data_classes: Tensor, num_classes: int, threshold: float = 0.02
) -> dict[str, float]:
    """How generated samples spread over the classes, against the data's histogram.

    Returns ``classes`` (how many classes hold at least ``threshold`` of the samples), ``max_share``
    (the largest class's share) and ``kl`` (KL(samples ‖ data) in nats of the two class histograms;
    0 when the samples have the data's proportions, log K when they all fall in one of K equally
    common classes).
    """
    q, p = class_shares(sample_classes, num_classes), class_shares(data_classes, num_classes)
    held = q > 0
    kl = float((q[held] * (q[held] / p[held]).log()).sum()) if bool((p[held] > 0).all()) else math.inf
    return {"classes": float((q >= threshold).sum()), "max_share": float(q.max()), "kl": kl}


def moment_gap(codes: Tensor, samples: Tensor, weight: Tensor, bias_h: Tensor) -> tuple[float, float]:
    """How far the RBM's equilibrium is from the codes: ‖C_data − C_model‖_F / ‖C_data‖_F for the coupling
    statistics whose difference is, to within a few per cent (the correlation of z's residuals about the
    codes, docs/maths.md §12), the gradient of W (§4), and its sampling noise.

    C_data is the mean of m_v m_hᵀ over images, m = E[s | z] (``codes``: (n, N), visible units first;
    p(s | z) factorises, so this is E[s_v s_hᵀ | z]); C_model the mean of s_v tanh(Wᵀs_v + h_h)ᵀ over
    ``samples`` ((C, n_v) visible states drawn from the model at equilibrium; the hidden units summed
    out). Computed from PCD's persistent chains instead, it is PCD's own gradient, which the training
    drives towards 0 even when the chains no longer represent the model. The gap is 0 when the RBM
    reproduces the codes' statistics; well above the noise, the RBM has not caught up with the codes
    the flow gives it. The noise is the standard deviation of the difference's error, for independent
    samples and images: √(e_model² + e_data²) / ‖C_data‖, each e² the unbiased estimate of its mean's
    squared error (``_error_of_mean``; 0 for fewer than two terms). Until round 12 (docs/results.md) it
    was the samples' term alone, from the difference of their two halves; a few hundred images make the
    codes' term as large.

    Returns (gap, noise).
    """
    n_visible = weight.shape[0]
    codes = codes.to(weight.dtype)
    data_v, data_h = codes[:, :n_visible], codes[:, n_visible:]
    samples = samples.to(weight.dtype)
    hidden = torch.tanh(samples @ weight + bias_h)
    data, model = data_v.T @ data_h / len(codes), samples.T @ hidden / len(samples)
    error = torch.hypot(_error_of_mean(data_v, data_h, data), _error_of_mean(samples, hidden, model))
    return float((data - model).norm() / data.norm()), float(error / data.norm())


def _error_of_mean(v: Tensor, h: Tensor, mean: Tensor) -> Tensor:
    """The standard error of ``mean`` = mean of the n rank-one terms v_i h_iᵀ (independent rows), in
    Frobenius norm: √((Σ‖v_i‖²‖h_i‖² − n‖mean‖²) / (n (n − 1))), whose square is unbiased for the mean's
    expected squared error; 0 for n < 2."""
    n = len(v)
    if n < 2:
        return mean.new_zeros(())
    spread = ((v * v).sum(1) * (h * h).sum(1)).sum() - n * (mean * mean).sum()
    return (spread.clamp_min(0) / (n * (n - 1))).sqrt()


def gap_beyond_noise(gap: float, noise: float) -> float:
    """The part of a ``moment_gap`` that its noise does not explain: √max(gap² − noise², 0).

    The errors of C_data and C_model (from finitely many images and samples) are independent of the true
    difference, with expected squared norm estimated without bias by noise² (relative to ‖C_data‖), so
    gap² overestimates the squared true gap by noise² on average and gap² − noise² estimates it without
    bias (up to dividing by the estimated ‖C_data‖). A gap equal to its noise is what codes and samples
    of an RBM that matched the data exactly would give.
    """
    return math.sqrt(max(gap**2 - noise**2, 0.0))


def code_nmi(
    probabilities: np.ndarray, labels: np.ndarray, clusters: int | None = None, seed: int = 0
) -> float:
    """Normalised mutual information between labels and the discrete codes.

    The N-bit codes are reduced by k-means on the posterior probabilities p(s | z) with as many clusters
    as classes (by default): a code that determines the class gives NMI ≈ 1, one independent of it ≈ 0.
    Clustering p(s | z) rather than picking bits uses every bit, weighs each by how decided it is, and
    is the same for every prior, so D-Flow and RBM-Flow are compared on equal terms.
    """
    from sklearn.cluster import KMeans  # scikit-learn loads only where codes are scored
    from sklearn.metrics import normalized_mutual_info_score

    clusters = clusters or len(np.unique(labels))
    assignment = KMeans(clusters, n_init=4, random_state=seed).fit_predict(
        np.asarray(probabilities, dtype=np.float64)
    )
    return float(normalized_mutual_info_score(labels, assignment))
