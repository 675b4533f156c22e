"""The one dispatch point: which backend computes an operation.

Each backend registers, per operation, an implementation and a predicate telling whether it can
run on a given device. ``backend="auto"`` takes the first registered backend, in PREFERENCE
order, that is available for the tensors' device. An explicit backend that cannot run raises a
clear error; nothing silently falls back.

Operations and their signatures (tensors already validated by the public API):

- ``distort_score(images, sigma, var, seed, ids, score) -> (uint8 images, float32 scores | None)``
  Gaussian blur (sigma or None) then additive noise (var or None), rounded to uint8 once, and
  optionally the SSIM of the result against ``images``.
- ``ssim(reference, distorted) -> float32 scores``
- ``jpeg(images, quality) -> uint8 images``
- ``soft_label_mse(logits, labels, targets_on_true) -> scalar loss`` (differentiable)
- ``lrn(x, radius, bias, alpha, beta) -> y`` TensorFlow's LRN across channels (differentiable)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

OPS = ("distort_score", "ssim", "jpeg", "soft_label_mse", "lrn")
PREFERENCE = ("triton", "dali", "cpu", "torch")
"""auto's order: the fastest backend first. Every op has a torch (reference) implementation."""


@dataclass(frozen=True)
class Impl:
    fn: Callable
    supports: Callable[[torch.device], bool]


_REGISTRY: dict[str, dict[str, Impl]] = {op: {} for op in OPS}


def register(op: str, backend: str, fn: Callable, supports: Callable[[torch.device], bool]) -> None:
    if op not in _REGISTRY:
        raise ValueError(f"unknown operation {op!r}; known: {OPS}")
    if backend not in PREFERENCE:
        raise ValueError(f"unknown backend {backend!r}; known: {PREFERENCE}")
    _REGISTRY[op][backend] = Impl(fn, supports)


def backends(op: str) -> list[str]:
    """Backends registered for ``op`` in this installation, fastest first."""
    _load_optional()
    return [b for b in PREFERENCE if b in _REGISTRY[op]]


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """The implementation of ``op`` for ``backend`` ("auto" or a name) on ``device``."""
    _load_optional()
    if not isinstance(backend, str) or (backend != "auto" and backend not in PREFERENCE):
        raise ValueError(f"backend must be 'auto' or one of {PREFERENCE}, got {backend!r}")
    table = _REGISTRY[op]
    if backend == "auto":
        for name in PREFERENCE:
            impl = table.get(name)
            if impl is not None and impl.supports(device):
                return name, impl.fn
        raise RuntimeError(f"no backend can run {op!r} on {device}")  # torch always can
    impl = table.get(backend)
    if impl is None:
        raise ValueError(
            f"backend {backend!r} is not available for {op!r} in this installation "
            f"(available: {[b for b in PREFERENCE if b in table]})"
        )
    if not impl.supports(device):
        raise ValueError(f"backend {backend!r} cannot run {op!r} on {device} tensors")
    return backend, impl.fn


_loaded = False


def _load_optional() -> None:
    """Import the optional backends once; each registers itself if its dependencies import."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import importlib.util

    from . import torch_backend  # noqa: F401  (always present)

    for mod in ("cpu_backend", "triton_backend", "dali_backend"):
        # A backend module that exists is imported and decides itself whether it registers (its
        # dependencies may be missing); an error inside it is a bug and propagates.
        if importlib.util.find_spec(f"{__package__}.{mod}") is not None:
            importlib.import_module(f"{__package__}.{mod}")
