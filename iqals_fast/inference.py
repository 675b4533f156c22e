"""Predictions of a trained network on uint8 images: what ``eval`` and the training curve share.

The network runs in a precision of :data:`config.PRECISIONS` (``fp32``, exact; or ``bf16`` autocast), the
log-softmax in float32, a fixed number of images a forward pass (the last batch padded, so an image's
outputs do not depend on the batch it falls in)."""

from __future__ import annotations

import numpy as np
import torch

from .config import PRECISIONS
from .model import standardize

EVAL_BATCH = 250
"""Images per forward pass. On the 2-core Zen 5 of issue 16 a batch of 250 measured 1.7-1.8x faster than
1,000 (its activations nearer the 32 MB L3); the fp32 outputs are the same bit for bit (:data:`MIN_ROWS`).
bench/eval_cpu.py measures it per machine (``--extra fp32-1000``): bench/results/eval-*.md."""

MIN_ROWS = 128
"""A last partial batch is padded to this many images (or ``batch``, if smaller). With fewer rows the fully
connected layers' matrix products take other kernels, whose sums round otherwise (seen here below 100
rows: log-probabilities ~1e-5 apart); padded, an image's outputs do not depend on the batch it falls in,
and every batch of at least ``MIN_ROWS`` gives the same bits (tests/test_evaluate.py)."""

EVAL_PRECISIONS = (*PRECISIONS, "checked")
"""What evaluation may run in: :data:`config.PRECISIONS`, or ``checked``: every image in bf16, then again in
fp32 every image whose two largest bf16 logits are closer than :data:`CHECK_MARGIN` of its largest absolute
logit, those images' outputs replaced by the fp32 ones. Its predicted classes, hence its accuracies, are
fp32's (below); its other metrics (NLL, ECE, Brier) carry bf16's rounding on the images it did not redo."""

CHECK_MARGIN = 0.1
"""``checked``'s margin. The argmax of bf16 logits z' equals fp32's z wherever the bf16 top-two gap exceeds
2 max_j |z'_j - z_j|. Measured on a trained model (the strategy-1 medium run, 3,000 test images each of
pristine, noise 0.02, blur 1.2, JPEG 4): max_j |z'_j - z_j| <= 0.020 max_j |z_j|, so the gap needed is at
most 0.04 of the scale; 0.1 leaves 2.5x, and redoes 9-17% of the images (bench/results/eval-*.md checks
the accuracies against fp32 on all 25 sets)."""


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where oneDNN's bf16 convolutions and
    matmuls are faster than float32's; elsewhere they are emulated (slower). x86 only: other CPUs say False."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(f()) for f in checks if f is not None)


def default_eval_precision(device) -> str:
    """``checked`` on a CPU with native bf16 (the same accuracies as fp32, measured faster:
    bench/results/eval-*.md), ``fp32`` elsewhere."""
    return "checked" if torch.device(device).type == "cpu" and native_bf16() else "fp32"


def check_precision(precision) -> str:
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(EVAL_PRECISIONS)}, got {precision!r}")
    return precision


def check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {batch!r}")
    return batch


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of an evaluation ``precision`` (None: none, float32 throughout)."""
    return {"fp32": None, "bf16": torch.bfloat16, "checked": torch.bfloat16}[check_precision(precision)]


@torch.inference_mode()
def predict_log_probs(model, images: np.ndarray, device, batch: int = EVAL_BATCH, precision: str = "fp32"
                      ) -> np.ndarray:
    """Log-softmax outputs, float64 N x K: the network in ``precision`` (:data:`EVAL_PRECISIONS`), the log-softmax
    in float32, ``batch`` images a forward pass (the last one padded: :data:`MIN_ROWS`)."""
    dtype = amp_dtype(precision)
    check_batch(batch)
    device = torch.device(device)
    out = None
    for i in range(0, len(images), batch):
        xb = images[i:i + batch]
        k = len(xb)
        if k < min(batch, MIN_ROWS):
            xb = np.concatenate([xb, np.repeat(xb[-1:], min(batch, MIN_ROWS) - k, 0)])
        x = torch.from_numpy(xb).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(standardize(x))
        z = logits[:k].float()
        lp = torch.log_softmax(z, 1).cpu().numpy()
        if out is None:
            out = np.empty((len(images), lp.shape[1]), np.float64)
            close = np.zeros(len(images), bool)
        if precision == "checked" and z.shape[1] > 1:
            close[i:i + k] = _close_calls(z).cpu().numpy()
        out[i:i + k] = lp  # float32 -> float64 as it is stored: no concatenated copy
    if out is None:
        return np.zeros((0, 0))
    if precision == "checked":
        redo = np.flatnonzero(close)
        if len(redo):
            out[redo] = predict_log_probs(model, images[redo], device, batch, "fp32")
    return out


def predict(model, images: np.ndarray, device, batch: int = EVAL_BATCH, precision: str = "fp32") -> np.ndarray:
    """Softmax probabilities, float32 N x K."""
    return np.exp(predict_log_probs(model, images, device, batch, precision)).astype(np.float32)


def _close_calls(logits: torch.Tensor) -> torch.Tensor:
    """Rows whose two largest logits lie within :data:`CHECK_MARGIN` of their largest absolute logit."""
    top2 = logits.topk(2, 1).values
    return (top2[:, 0] - top2[:, 1]) < CHECK_MARGIN * logits.abs().amax(1)
