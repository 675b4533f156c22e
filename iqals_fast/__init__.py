"""iqals-fast: image-quality-assessment-based label smoothing (IQA-LS), fast and verified.

Public API (stable)::

    import iqals_fast as iq
    iq.LEVELS, iq.STRATEGIES
    iq.distort(images, kind, level=None, *, param=None, seed=0, ids=None, backend="auto")
    iq.ssim(reference, distorted, *, backend="auto")
    iq.distort_and_score(images, kind, level, *, seed=0, ids=None, backend="auto")
    iq.soft_labels(labels, scores, num_classes=10, transform="identity")
    iq.soft_label_mse(logits, labels, scores, transform="identity", backend="auto")
    iq.iqa_measure(reference, distorted, measure), iq.iqa_quality(reference, distorted, measure)  # ops/iqa.py
    iq.backends(op)  # the dispatch table's backends of op installed here, auto's order (ops/dispatch.py)

Each operation, its reference, fast kernels, dispatch entry and tests: docs/ops.md.
"""

from .config import LEVELS, STRATEGIES, Levels, Protocol, Strategy
from .ops.api import distort, distort_and_score, ssim
from .ops.dispatch import backends
from .ops.iqa import IQA_MEASURES, iqa_measure, iqa_quality
from .ops.labels import soft_label_mse, soft_labels

__version__ = "0.1.0"

__all__ = [
    "IQA_MEASURES",
    "LEVELS",
    "STRATEGIES",
    "Levels",
    "Protocol",
    "Strategy",
    "backends",
    "distort",
    "distort_and_score",
    "iqa_measure",
    "iqa_quality",
    "soft_label_mse",
    "soft_labels",
    "ssim",
]
