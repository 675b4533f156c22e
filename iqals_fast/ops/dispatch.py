"""The one dispatch point: which backend computes an operation (docs/ops.md has the whole map).

``TABLE`` maps each operation to its backends, in ``backend="auto"``'s order of preference (the
fastest first; ``torch``, the reference, last, and always there). Each entry names its
implementation by a direct import, so "go to definition" reaches it, and the backend module's own
``available()`` (its optional dependency is installed here) and ``supports(device)`` (it can run
on that device). ``auto`` takes the first auto-eligible entry that is available and supports the
tensors' device; an explicit backend that cannot run raises a clear error; nothing silently falls
back, except by JPEG's rule below.

Operations and their signatures (arguments already checked by the public entry, ``ops/checks.py``):

- ``distort_and_score(images, sigma, var, seed, ids, score) -> (uint8 images, float32 scores | None)``
  Gaussian blur (sigma or None) then additive noise (var or None), rounded to uint8 once, and
  optionally the SSIM of the result against ``images``.
- ``ssim(reference, distorted) -> float32 scores``
- ``jpeg(images, quality) -> uint8 images``
- ``soft_label_mse(logits, labels, targets_on_true) -> scalar loss`` (differentiable)
- ``lrn(x, radius, bias, alpha, beta) -> y`` TensorFlow's LRN across channels (differentiable)

JPEG's rule (:func:`resolve_jpeg`): a backend with no JPEG of its own (``cpu``, ``triton``) takes the
best JPEG there is (``dali``, DALI's CPU operator, bit-identical to PIL, where installed; else PIL)
and scores with its own SSIM; a JPEG-only backend (``dali``, ``dali_gpu``) scores with auto's SSIM.
``dali_gpu`` (DALI's CUDA JPEG, approximate) is an explicit opt-in: auto never picks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import cpu, dali, reference, triton


def _installed() -> bool:
    return True


def _any_device(device: torch.device) -> bool:
    return True


@dataclass(frozen=True)
class Impl:
    fn: Callable
    available: Callable[[], bool] = _installed
    supports: Callable[[torch.device], bool] = _any_device
    auto: bool = True
    """Whether ``backend="auto"`` may pick it."""


TABLE: dict[str, dict[str, Impl]] = {
    "distort_and_score": {
        "triton": Impl(triton.distort_and_score, triton.available, triton.supports),
        "cpu": Impl(cpu.distort_and_score, cpu.available, cpu.supports),
        "torch": Impl(reference.distort_and_score),
    },
    "ssim": {
        "triton": Impl(triton.ssim, triton.available, triton.supports),
        "cpu": Impl(cpu.ssim, cpu.available, cpu.supports),
        "torch": Impl(reference.ssim),
    },
    "jpeg": {
        "dali": Impl(dali.jpeg_cpu, dali.available, dali.supports),
        "dali_gpu": Impl(dali.jpeg_gpu, dali.available, dali.supports_gpu, auto=False),
        "torch": Impl(reference.jpeg),
    },
    "soft_label_mse": {
        "triton": Impl(triton.soft_label_mse, triton.available, triton.supports),
        "torch": Impl(reference.soft_label_mse),
    },
    "lrn": {
        "cpu": Impl(cpu.lrn, cpu.available, cpu.supports),
        "torch": Impl(reference.lrn),
    },
}
"""{op: {backend: implementation}}, each op's backends in auto's order of preference."""

OPS = tuple(TABLE)
BACKENDS = ("triton", "dali", "dali_gpu", "cpu", "torch")
"""Every backend name ``backend=`` accepts (besides "auto")."""
PREFERENCE = tuple(b for b in BACKENDS if any(t.get(b) and t[b].auto for t in TABLE.values()))
"""auto's order across the operations: ("triton", "dali", "cpu", "torch")."""


def check_backend(backend) -> str:
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


def backends(op: str) -> list[str]:
    """Backends of ``op`` installed here, in auto's order (opt-in ones last)."""
    if op not in TABLE:
        raise ValueError(f"unknown operation {op!r}; known: {OPS}")
    names = [b for b, impl in TABLE[op].items() if impl.available()]
    return [b for b in names if TABLE[op][b].auto] + [b for b in names if not TABLE[op][b].auto]


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """(name, implementation) of ``op`` for ``backend`` ("auto" or a name) on ``device``."""
    check_backend(backend)
    if op not in TABLE:
        raise ValueError(f"unknown operation {op!r}; known: {OPS}")
    table = TABLE[op]
    if backend == "auto":
        for name, impl in table.items():
            if impl.auto and impl.available() and impl.supports(device):
                return name, impl.fn
        raise RuntimeError(f"no backend can run {op!r} on {device}")  # torch always can
    impl = table.get(backend)
    if impl is None or not impl.available():
        raise ValueError(
            f"backend {backend!r} is not available for {op!r} in this installation (available: {backends(op)})"
        )
    if not impl.supports(device):
        raise ValueError(f"backend {backend!r} cannot run {op!r} on {device} tensors")
    return backend, impl.fn


def resolve_jpeg(backend: str, device: torch.device, score: bool):
    """JPEG's rule: ((name, jpeg), (name, ssim) or None) for a JPEG distortion asked of ``backend``."""
    check_backend(backend)
    jpeg = resolve("jpeg", backend if backend in TABLE["jpeg"] else "auto", device)
    if not score:
        return jpeg, None
    return jpeg, resolve("ssim", backend if backend in TABLE["ssim"] else "auto", device)
