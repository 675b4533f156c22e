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

One training epoch, as ``train`` consumes it, is ``epoch_batches(...)``: the plan, the epoch's
batch order (this process's share of it under torchrun), the images distorted as planned, their
labels and quality targets T(q) on the true class, iterated one step's batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..config import KIND_LEVELS, KINDS, LEVELS, MIXTURE, Strategy
from ..ops.api import distort, distort_and_score
from ..ops.iqa import check_measure, iqa_quality
from ..ops.labels import apply_transform
from .sources import Dataset


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

    ``cache``: a ``DistortionCache`` or anything with its ``images`` / ``get`` interface. Numpy
    images give numpy arrays; torch images give tensors on their device.
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


def training_cache(images: np.ndarray, device, backend: str = "auto", iqa: str = "ssim") -> DistortionCache:
    """The per-dataset distortion cache of training. On CUDA the images, the cached blur/JPEG copies and
    each epoch's noise (the Triton kernel) stay on the GPU: no host round trip per epoch. (JPEG copies
    come from the dispatched JPEG: DALI's CPU operator where installed, else PIL; the same bytes.)"""
    on = torch.from_numpy(images).to(device) if torch.device(device).type == "cuda" else images
    return DistortionCache(on, backend=backend, iqa=iqa)


def batch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of the n training images: step b's batch is ``order[b*B:(b+1)*B]``."""
    return _rng(seed, epoch, 2).permutation(n)


def check_scores(s: np.ndarray, epoch: int) -> None:
    """Every quality score must lie in [0, 1] (a NaN fails too): anything else is a scoring backend's bug."""
    bad = ~((s >= 0) & (s <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RuntimeError(f"epoch {epoch + 1}: a quality score outside [0, 1] ({s[i]!r}); the scoring backend is wrong")


@dataclass
class EpochBatches:
    """One epoch of training data for this process; iterating yields each step's
    ``(uint8 images, labels, quality targets)``, on the training device."""

    plan: EpochPlan
    ids: np.ndarray  # dataset indices of this process's images, in step order
    scores: np.ndarray  # float32 quality of each (1 where pristine), on the host
    images: torch.Tensor  # uint8, len(ids) x H x W x 3
    labels: torch.Tensor  # int64
    targets: torch.Tensor  # T(quality) on the true class (1 for 0-1 labels)
    steps: int
    local_batch: int  # this process's share of a step's batch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for b in range(self.steps):
            sl = slice(b * self.local_batch, (b + 1) * self.local_batch)
            yield self.images[sl], self.labels[sl], self.targets[sl]

    def quality_sums(self) -> torch.Tensor:
        """(sum of scores, count) per (kind, level) of ``KIND_LEVELS`` over this process's images, float64
        on the training device (summed over processes, ``mean_quality`` gives the epoch's means)."""
        kind, level = self.plan.kind[self.ids], self.plan.level[self.ids]
        out = []
        for k, lvl in KIND_LEVELS:
            sel = (kind == KINDS.index(k)) & (level == lvl)
            out += [float(self.scores[sel].astype(np.float64).sum()), float(sel.sum())]
        return torch.tensor(out, dtype=torch.float64, device=self.labels.device)


def mean_quality(sums: torch.Tensor) -> dict[str, float]:
    """``{"blur1": mean score, ...}`` from ``quality_sums`` (levels no image had are left out)."""
    return {f"{k}{lvl}": float(sums[2 * j] / sums[2 * j + 1]) for j, (k, lvl) in enumerate(KIND_LEVELS)
            if sums[2 * j + 1] > 0}


def epoch_batches(cache: DistortionCache, ds: Dataset, strategy: Strategy, *, seed: int, epoch: int, batch_size: int,
                  transform: str = "identity", mixture=MIXTURE, rank: int = 0, size: int = 1,
                  device: str | torch.device = "cpu") -> EpochBatches:
    """Epoch ``epoch`` of training ``strategy`` on ``ds`` (whose images ``cache`` distorts), for process
    ``rank`` of ``size``: the plan drawn from (seed, epoch), the images distorted as planned and scored,
    the labels and the quality targets (IQA-LS: T(score); 0-1 labels: 1), in the epoch's batch order.

    Step b's global batch is ``order[b*B:(b+1)*B]``; process ``rank`` takes every size-th image of it,
    i.e. the positions p of the order with p % size == rank (B is a multiple of size), so the steps of
    all processes together see exactly one process's batches."""
    n = len(ds.train_y)
    plan = epoch_plan(n, strategy.kinds, seed, epoch, mixture)
    ids = batch_order(n, seed, epoch)[rank::size]
    x, s = epoch_data(cache, plan, ids)  # numpy, or tensors on the device (images cached on a GPU)
    scores = np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s)  # N floats, once per epoch
    check_scores(scores, epoch)
    images = torch.as_tensor(x, device=device)
    labels = torch.from_numpy(ds.train_y[ids]).to(device)
    q = torch.as_tensor(s, device=device) if strategy.iqa_ls else torch.ones(len(ids), device=device)
    return EpochBatches(plan, ids, scores, images, labels, apply_transform(q, transform, ds.num_classes),
                        steps=-(-n // batch_size), local_batch=batch_size // size)
