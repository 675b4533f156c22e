"""Calibration and confidence metrics of a classifier's softmax outputs, in plain numpy.

- ``ece``: expected calibration error (Guo et al. 2017) with equal-width bins of the top-class
  confidence, bin b = (b/B, (b+1)/B] (B = 15): sum_b n_b / N * |accuracy_b - mean confidence_b|.
- ``nll``: mean negative log-likelihood of the true class (natural log), from log-probabilities.
- ``brier``: multi-class Brier score, mean over images of sum_k (p_k - [k = y])^2 (0 best, 2 worst).
- ``spearman``: Spearman's rank correlation with average ranks for ties (as ``scipy.stats.spearmanr``);
  NaN when either variable is constant.
- ``binned``: counts, confidence sums and correct counts per bin, so that reliability diagrams and
  confidence-against-SSIM curves can be summed over test sets and seeds after the fact.
- ``pack_correct`` / ``unpack_correct``: which test images a model got right, as text (base64 of the bits), so
  that two models' accuracies on the same images can be compared pairwise after the fact
  (``report.label_effects``).
"""

from __future__ import annotations

import base64

import numpy as np

ECE_BINS = 15
SSIM_BINS = 20
"""Equal-width SSIM bins over [0, 1] for the confidence-against-SSIM figure (SSIM <= 0 goes in the first)."""


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probs must be N x K and labels N, got {p.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return p, y.astype(np.int64)


def bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each value in (0, 1] with bins (b/B, (b+1)/B]; values <= 0 go to bin 0, > 1 to the last."""
    return np.clip(np.ceil(np.asarray(values, np.float64) * bins).astype(np.int64) - 1, 0, bins - 1)


def binned(values: np.ndarray, conf: np.ndarray, correct: np.ndarray, bins: int) -> dict[str, list]:
    """Per bin of ``values``: number of images, sum of ``conf`` and number correct."""
    b = bin_index(values, bins)
    return {"count": np.bincount(b, minlength=bins).tolist(),
            "conf_sum": np.bincount(b, weights=np.asarray(conf, np.float64), minlength=bins).tolist(),
            "correct": np.bincount(b, weights=np.asarray(correct, np.float64), minlength=bins).astype(np.int64).tolist()}


def ece_from_bins(count, conf_sum, correct) -> float:
    n = np.asarray(count, np.float64)
    if n.sum() == 0:
        return float("nan")
    nz = n > 0
    gap = np.abs(np.asarray(correct, np.float64)[nz] - np.asarray(conf_sum, np.float64)[nz])
    return float(gap.sum() / n.sum())


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    p, y = _check(probs, labels)
    conf = p.max(1)
    b = binned(conf, conf, p.argmax(1) == y, bins)
    return ece_from_bins(b["count"], b["conf_sum"], b["correct"])


def nll(log_probs: np.ndarray, labels: np.ndarray) -> float:
    lp, y = _check(log_probs, labels)
    return float(-lp[np.arange(len(y)), y].mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    p, y = _check(probs, labels)
    d = p.copy()
    d[np.arange(len(y)), y] -= 1.0
    return float((d * d).sum(1).mean())


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..N, ties given the average of the ranks they span (scipy's ``method='average'``)."""
    a = np.asarray(a)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inv.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs two arrays of one length, got {a.shape} and {b.shape}")
    if a.size < 2 or np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def classification_metrics(log_probs: np.ndarray, labels: np.ndarray, ssim: np.ndarray) -> dict:
    """Everything evaluate.py records for one test set (floats; NaN where undefined -> None)."""
    lp, y = _check(log_probs, labels)
    p = np.exp(lp)
    pred = p.argmax(1)
    correct = pred == y
    conf = p.max(1)
    true_conf = p[np.arange(len(y)), y]
    rel = binned(conf, conf, correct, ECE_BINS)
    rho = spearman(true_conf, ssim)
    return {
        "accuracy": float(correct.mean()),
        "mean_ssim": float(np.mean(ssim)),
        "mean_true_class_confidence": float(true_conf.mean()),
        "mean_confidence": float(conf.mean()),
        "ece": ece_from_bins(rel["count"], rel["conf_sum"], rel["correct"]),
        "nll": float(-lp[np.arange(len(y)), y].mean()),
        "brier": brier(p, y),
        "spearman_true_conf_ssim": None if np.isnan(rho) else rho,
        "reliability": rel,
        "by_ssim": binned(ssim, true_conf, correct, SSIM_BINS),
        "n": int(len(y)),
    }


def pack_correct(correct: np.ndarray) -> str:
    """A boolean vector (image i right or wrong) as base64 text of its bits, ``np.packbits`` order."""
    c = np.asarray(correct)
    if c.ndim != 1 or c.dtype != np.bool_:
        raise ValueError(f"correct must be a 1-d boolean vector, got {c.dtype} {c.shape}")
    return base64.b64encode(np.packbits(c).tobytes()).decode("ascii")


def unpack_correct(text: str, n: int) -> np.ndarray:
    """``pack_correct``'s inverse for ``n`` images; a ValueError when ``text`` does not hold ``n`` bits."""
    try:
        raw = np.frombuffer(base64.b64decode(text, validate=True), np.uint8)
    except (TypeError, ValueError) as e:
        raise ValueError(f"not a packed vector of correct predictions: {e}") from None
    if len(raw) != (n + 7) // 8 or (n % 8 and raw[-1] & ((1 << (8 - n % 8)) - 1)):
        raise ValueError(f"a packed vector of {len(raw)} bytes does not hold {n} predictions")
    return np.unpackbits(raw, count=n).astype(bool)
