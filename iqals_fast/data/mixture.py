"""The epoch's mixture: which training images are pristine and which are distorted, how and how much.

Each epoch draws, from (seed, epoch) alone, a fresh assignment of the training images to pristine /
level 1 / level 2 / level 3 in exact proportions (60/15/15/10 by default); with several kinds
(MIX_all3) each level's images are split between the kinds as evenly as possible, at random. The
noise of an epoch is keyed by a 32-bit seed derived from (seed, epoch), so a resumed run draws the
same noise as an uninterrupted one, and every image's noise depends only on its dataset index.

Blur and JPEG are deterministic, so their distorted images and SSIM scores are computed once per
(kind, level) for the whole training set and reused every epoch (``DistortionCache``). With another
IQA measure than SSIM (``iqa=``, see ``iqals_fast/ops/iqa.py``) the scores are that measure's
quality q in (0, 1], computed by the torch reference code after the (fast) distortion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import KINDS, LEVELS, MIXTURE
from ..ops.api import distort, distort_and_score
from ..ops.iqa import check_measure, iqa_quality


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(stream)]))


def noise_seed(seed: int, epoch: int) -> int:
    """The 32-bit noise seed of one epoch (test sets use ``epoch = -1``, see evaluate.py)."""
    return int(np.random.SeedSequence([int(seed), int(epoch) + 1, 0x0015E]).generate_state(1)[0])


@dataclass
class EpochPlan:
    level: np.ndarray  # int8 N: 0 pristine, 1-3 distortion level
    kind: np.ndarray  # int8 N: index into KINDS, -1 for pristine
    noise_seed: int


def counts(n: int, mixture=MIXTURE) -> list[int]:
    """Exact counts per level summing to n: floor for the distorted levels, the rest pristine."""
    if abs(sum(mixture) - 1.0) > 1e-9 or any(m < 0 for m in mixture):
        raise ValueError(f"mixture must be 4 non-negative shares summing to 1, got {mixture}")
    lv = [int(np.floor(n * m + 1e-9)) for m in mixture[1:]]
    return [n - sum(lv), *lv]


def epoch_plan(n: int, kinds: tuple[str, ...], seed: int, epoch: int, mixture=MIXTURE) -> EpochPlan:
    level = np.zeros(n, np.int8)
    kind = np.full(n, -1, np.int8)
    if kinds:
        rng = _rng(seed, epoch, 1)
        order = rng.permutation(n)
        c = counts(n, mixture)
        start = c[0]
        for lvl in (1, 2, 3):
            idx = order[start:start + c[lvl]]
            start += c[lvl]
            level[idx] = lvl
            ks = np.array([KINDS.index(k) for k in kinds], np.int8)
            kind[idx] = rng.permutation(np.resize(ks, len(idx)))
    return EpochPlan(level, kind, noise_seed(seed, epoch))


class DistortionCache:
    """Distorted copies and SSIM scores of a fixed image set, per (kind, level), computed on demand.

    Deterministic kinds (blur, JPEG) are computed once for all images and kept; noise is computed
    for the requested images with the requested seed every time. ``iqa`` picks the quality score
    (``ssim``, the paper's, fused with the distortion on the fast backends; or ``ms-ssim-small``,
    ``gmsd``, ``psnr``: the quality q = T(measure) of ``iqals_fast.ops.iqa``).
    """

    def __init__(self, images: np.ndarray, backend: str = "auto", levels=LEVELS, iqa: str = "ssim"):
        self.images = images
        self.backend = backend
        self.levels = levels
        self.iqa = check_measure(iqa)
        self._fixed: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def _score(self, ref: np.ndarray, kind: str, param, seed: int, ids) -> tuple[np.ndarray, np.ndarray]:
        if self.iqa == "ssim":
            return distort_and_score(ref, kind, param=param, seed=seed, ids=ids, backend=self.backend)
        y = distort(ref, kind, param=param, seed=seed, ids=ids, backend=self.backend)
        return y, iqa_quality(ref, y, self.iqa, backend=self.backend)

    def get(self, kind: str, level: int, idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if kind == "noise":
            return self._score(self.images[idx], kind, self.levels.param(kind, level), seed, idx.astype(np.int64))
        key = (kind, level)
        if key not in self._fixed:
            self._fixed[key] = self._score(self.images, kind, self.levels.param(kind, level), 0, None)
        x, s = self._fixed[key]
        return x[idx], s[idx]


def epoch_data(cache, plan: EpochPlan, idx: np.ndarray | None = None):
    """The epoch's training images (uint8, pristine where planned) and their quality scores (1 if
    pristine), for the dataset indices ``idx`` in that order (default: all, in dataset order).

    ``cache``: a ``DistortionCache`` or anything with its ``images`` / ``get`` interface (the DALI
    one of data/dali.py). Numpy images give numpy arrays; torch images give tensors on their device.
    Every image's distortion depends on its dataset index only, so any split of the indices (the
    ranks' shares under torchrun) gives the same images as one call for all.
    """
    images = cache.images
    idx = np.arange(len(images)) if idx is None else np.asarray(idx, dtype=np.int64)
    on_torch = isinstance(images, torch.Tensor)
    if on_torch:
        x = images[torch.from_numpy(idx).to(images.device)]
        s = torch.ones(len(idx), dtype=torch.float32, device=images.device)
    else:
        x = images[idx]
        s = np.ones(len(idx), np.float32)
    kind, level = plan.kind[idx], plan.level[idx]
    for ki, k in enumerate(KINDS):
        for lvl in (1, 2, 3):
            sel = np.flatnonzero((kind == ki) & (level == lvl))
            if len(sel):
                y, sc = cache.get(k, lvl, idx[sel], plan.noise_seed)
                at = torch.from_numpy(sel).to(images.device) if on_torch else sel
                x[at], s[at] = y, sc
    return x, s
