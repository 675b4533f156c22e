"""IQA-based label smoothing: Eq. 2 (the soft label) and Eq. 1 (its squared-error loss).

``soft_labels`` is plain torch (no dispatch); ``soft_label_mse`` checks its arguments and runs the
dispatch table's ``soft_label_mse`` (Triton's fused kernel on CUDA, ``reference.soft_label_mse``
elsewhere).

A distorted image of class y with quality score s gets the label
    q_y = T(s),   q_k = (1 - T(s)) / (K - 1) for k != y,
and the loss is the squared error between the softmax output and q, summed over classes and
averaged over the batch. 0-1 labels are the case s = 1 (T(1) = 1 for every transform here).

Transforms T (maps [0, 1] into [0, 1], T(1) = 1), given as a string:
- ``"identity"``: T(s) = s (the paper);
- ``"power:G"``: T(s) = s ** G, G > 0 (G > 1 sharpens the penalty for low quality);
- ``"affine:A"``: T(s) = clamp(1 - A * (1 - s), 1/K, 1), A > 0 (A scales the label's drop from 1;
  clamped so the true class never falls below the uniform 1/K).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import checks, dispatch


def parse_transform(transform: str) -> tuple[str, float]:
    if not isinstance(transform, str):
        raise ValueError(f"transform must be a string, got {transform!r}")
    name, _, arg = transform.partition(":")
    if name == "identity" and not arg:
        return name, 1.0
    if name in ("power", "affine") and arg:
        try:
            a = float(arg)
        except ValueError:
            a = float("nan")
        if math.isfinite(a) and a > 0:
            return name, a
    raise ValueError(
        f"unknown transform {transform!r}: use 'identity', 'power:G' or 'affine:A' with G, A > 0"
    )


def apply_transform(scores: torch.Tensor, transform: str, num_classes: int) -> torch.Tensor:
    name, a = parse_transform(transform)
    if name == "identity":
        return scores
    if name == "power":
        return scores**a
    return torch.clamp(1.0 - a * (1.0 - scores), min=1.0 / num_classes, max=1.0)


def soft_labels(labels, scores, num_classes: int = 10, transform: str = "identity"):
    """Eq. 2: N x K float32 soft labels.

    A numpy array for numpy labels and numpy (or list) scores; otherwise a torch tensor on the scores'
    device (the labels are moved there), differentiable with respect to torch scores that require grad.
    """
    lab, sc = checks.labels_scores(labels, scores, num_classes)
    t = apply_transform(sc.to(torch.float32), transform, num_classes)
    q = ((1.0 - t) / (num_classes - 1))[:, None].repeat(1, num_classes)
    q = q.scatter(1, lab[:, None].long().to(q.device), t[:, None])
    return q.numpy() if isinstance(labels, np.ndarray) and not isinstance(scores, torch.Tensor) else q


def soft_label_mse(logits: torch.Tensor, labels, scores, transform: str = "identity", backend: str = "auto"):
    """Eq. 1: mean over the batch of sum_k (softmax(logits)_k - q_k)^2, q from Eq. 2. Differentiable.

    logits: B x K float tensor; labels: B integers; scores: B values in [0, 1] (1 = 0-1 labels).
    """
    checks.logits(logits)
    lab, sc = checks.labels_scores(labels, scores, logits.shape[1])
    if lab.shape[0] != logits.shape[0]:
        raise ValueError(f"labels ({lab.shape[0]}) and logits ({logits.shape[0]}) must have the same batch size")
    on_true = apply_transform(sc.to(device=logits.device, dtype=torch.float32), transform, logits.shape[1])
    _, fn = dispatch.resolve("soft_label_mse", backend, logits.device)
    return fn(logits, lab.to(logits.device), on_true)
