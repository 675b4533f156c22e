"""JPEG through NVIDIA DALI (``fn.jpeg_compression_distortion``): backends ``dali`` and ``dali_gpu``.

Optional: needs ``nvidia-dali-cuda120`` (or the CUDA 13 build); :func:`available` says whether it
imports, and the dispatch table leaves both backends out where it does not.

- ``dali`` (:func:`jpeg_cpu`): DALI's CPU operator, libjpeg-turbo with PIL's settings, so its bytes
  equal PIL's ``save(format="JPEG", quality=q)`` + decode (the torch reference) bit for bit (DALI
  2.4; tests/ops/test_jpeg.py, on generated and real images at every paper quality), about 4.5x
  faster than PIL's thread pool on a 2-core CPU (bench/results/dali-cpu-*.md). It serves CPU and
  CUDA tensors alike (CUDA images are encoded on the host) and is auto's JPEG where installed.
- ``dali_gpu`` (:func:`jpeg_gpu`): DALI's own CUDA kernel (DCT + quantisation, no entropy coding,
  its own chroma resampling), which only approximates libjpeg (tests/ops/test_jpeg.py states the
  bounds). An explicit opt-in for CUDA tensors: auto never picks it, since it would change the
  training data.

:func:`jpeg` is the whole operator (per-image qualities, batch size, threads, device choice).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from .checks import as_images, jpeg_qualities

BATCH = 1024
"""Images per DALI iteration."""


class DaliUnavailable(ImportError):
    """NVIDIA DALI is not installed (or not importable) here."""


@functools.cache
def available() -> bool:
    """Whether ``nvidia.dali`` can be imported."""
    try:
        _dali()
    except DaliUnavailable:
        return False
    return True


def supports(device: torch.device) -> bool:
    """The CPU operator: for CPU and CUDA tensors (CUDA images are encoded on the host)."""
    return device.type in ("cpu", "cuda") and available()


def supports_gpu(device: torch.device) -> bool:
    """The GPU operator: for CUDA tensors."""
    return device.type == "cuda" and available()


def jpeg_cpu(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Backend ``dali``: libjpeg on the CPU, PIL's bytes."""
    return jpeg(images, int(quality), device="cpu")


def jpeg_gpu(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Backend ``dali_gpu``: DALI's CUDA kernel (approximate)."""
    return jpeg(images, int(quality), device="gpu")


def _dali():
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
    except ImportError as e:
        raise DaliUnavailable(
            f"NVIDIA DALI is not importable ({e}): install it with `pip install nvidia-dali-cuda120` "
            "(Linux x86_64; its CPU operators run without a GPU), or use the torch backend (PIL)"
        ) from None
    return dali, fn, types


def _threads(num_threads: int | None) -> int:
    if num_threads is None:
        return max(1, min(8, os.cpu_count() or 1))
    if int(num_threads) < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return int(num_threads)


def _check_batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def _device(device, default: torch.device) -> str:
    """'cpu' or 'gpu' from a DALI-style or torch-style device name (None: where the data is)."""
    if device is None:
        return "gpu" if default.type == "cuda" else "cpu"
    d = str(device)
    if d in ("cpu", "gpu") or d.startswith("cuda"):
        out = "cpu" if d == "cpu" else "gpu"
    else:
        raise ValueError(f"device must be 'cpu', 'gpu' or 'cuda[:N]', got {device!r}")
    if out == "gpu" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs CUDA, which is not available here")
    return out


def _device_id(device, t: torch.device | None = None) -> int:
    if t is not None and t.type == "cuda":
        return t.index if t.index is not None else torch.cuda.current_device()
    d = str(device)
    if d.startswith("cuda:"):
        return int(d.split(":", 1)[1])
    return torch.cuda.current_device()


def _run(graph, feeds: dict[str, list], n_iter: int, batch_size: int, num_threads: int, device_id):
    """Build a pipeline from ``graph()`` (returns its outputs), feed every batch of each named
    external source up front, run ``n_iter`` iterations and yield each iteration's outputs.

    A fresh pipeline per call (building one takes a few milliseconds) keeps the feed / run
    bookkeeping of DALI's prefetching executor trivially consistent.
    """
    dali, _, _ = _dali()
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                         prefetch_queue_depth=1)
    with pipe:
        outs = graph()
        pipe.set_outputs(*(outs if isinstance(outs, tuple) else (outs,)))
    pipe.build()
    for name, batches in feeds.items():
        for b in batches:
            # CUDA input: DALI copies it on torch's current stream, after the kernels that wrote it
            kw = {"cuda_stream": torch.cuda.current_stream(b.device)} if isinstance(b, torch.Tensor) and b.is_cuda else {}
            pipe.feed_input(name, b, **kw)
    try:
        for _ in range(n_iter):
            yield pipe.run()  # host-synchronous outputs: safe to copy on any stream
    finally:
        del pipe


def _copy_out(tl, dest: torch.Tensor, what: str) -> None:
    """Copy a dense DALI TensorList into ``dest`` (a contiguous torch slice, CPU or CUDA): device to
    device for GPU results into CUDA tensors, one host copy only where the two sides differ."""
    from nvidia.dali.plugin.pytorch import feed_ndarray
    from nvidia.dali.tensors import TensorListGPU

    if not tl.is_dense_tensor():
        shapes = sorted({tuple(tl[i].shape()) for i in range(len(tl))})
        raise RuntimeError(f"{what}: DALI returned images of different sizes ({shapes[:4]}...)")
    on_gpu = isinstance(tl, TensorListGPU)
    if on_gpu and not dest.is_cuda:
        tl, on_gpu = tl.as_cpu(), False
    t = tl.as_tensor()
    if tuple(t.shape()) != tuple(dest.shape):
        raise RuntimeError(f"{what}: DALI returned shape {tuple(t.shape())}, expected {tuple(dest.shape)}")
    if on_gpu:
        feed_ndarray(t, dest, cuda_stream=torch.cuda.current_stream(dest.device))
    elif dest.is_cuda:
        dest.copy_(torch.from_numpy(np.array(t)))
    else:
        feed_ndarray(t, dest)


def jpeg(images, quality, *, device=None, batch_size: int = BATCH, num_threads: int | None = None):
    """JPEG-compress and decode uint8 N x H x W x 3 images with ``fn.jpeg_compression_distortion``.

    ``quality``: an int in [1, 100] or one per image. ``device``: "cpu" (libjpeg-turbo, equal to
    PIL bit for bit) or "gpu" (DALI's CUDA kernel, approximate); default: where the images are.
    Returns the input's type and device (numpy in, numpy out; torch CUDA in, torch CUDA out).
    """
    t, back = as_images(images)
    n = t.shape[0]
    q = jpeg_qualities(quality, n)
    dev = _device(device, t.device)
    batch_size, num_threads = _check_batch(batch_size), _threads(num_threads)
    out = torch.empty(t.shape, dtype=torch.uint8, device=t.device)
    if n == 0:
        return back(out)
    _, fn, types = _dali()
    src = t.contiguous()
    if dev == "cpu" and src.is_cuda:
        src = src.cpu()
    feed_gpu = src.is_cuda

    def graph():
        x = fn.external_source(name="x", device="gpu" if feed_gpu else "cpu", layout="HWC", dtype=types.UINT8)
        qq = fn.external_source(name="q", dtype=types.INT32)
        if dev == "gpu" and not feed_gpu:
            x = x.gpu()
        return fn.jpeg_compression_distortion(x, quality=qq, device=dev)

    starts = range(0, n, batch_size)
    xs = [src[i:i + batch_size] if feed_gpu else src[i:i + batch_size].numpy() for i in starts]
    qs = [np.ascontiguousarray(q[i:i + batch_size]) for i in starts]
    device_id = _device_id(device, t.device) if dev == "gpu" else None
    for i, (y,) in zip(starts, _run(graph, {"x": xs, "q": qs}, len(xs), batch_size, num_threads, device_id)):
        _copy_out(y, out[i:i + batch_size], "jpeg")
    return back(out)
