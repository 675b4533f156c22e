"""The NVIDIA DALI data path: read + decode, JPEG recompression, and the epoch's training data.

Optional: everything here needs ``nvidia-dali-cuda120`` (or the CUDA 13 build); without it the
functions raise :class:`DaliUnavailable` and the plain path (``data/sources.py``,
``data/mixture.py``) serves. On a machine without a GPU DALI's CPU operators run.

- :func:`read_split` / :func:`load`: class folders (``fn.readers.file``, sharded per rank with
  ``shard_id`` / ``num_shards``) or ``.tar`` / ``.tar.gz`` archives of them (members fed as encoded
  bytes through ``fn.external_source``), decoded by ``fn.decoders.image`` (``device="mixed"`` on a
  GPU, ``"cpu"`` otherwise). CIFAR python batches, ``cifar10`` and ``synthetic`` are in-memory
  arrays: :func:`load` takes them from ``sources.load`` and shards their training rows.
- :func:`jpeg`: ``fn.jpeg_compression_distortion``. On the CPU it is libjpeg-turbo and equals PIL's
  ``save(format="JPEG", quality=q)`` + decode bit for bit (DALI 2.4, tested). On a GPU it is DALI's
  own CUDA kernel (DCT + quantisation, no entropy coding, its own chroma resampling), which only
  approximates libjpeg (see tests/test_dali.py for the tolerance).
- :class:`DaliDistortionCache` + :func:`dali_epoch_data`: drop-ins for ``DistortionCache`` +
  ``epoch_data``. Blur and JPEG are deterministic, so by default (``precompute=True``) their copies
  and SSIM scores are computed once per dataset and level (JPEG by DALI, blur by the fused
  distort+score kernel) and only noise runs every epoch; ``precompute=False`` distorts only the
  images an epoch picks (measured slower over a run: bench/results/dali-cpu-*.md). Blur and noise
  go through ``iq.distort_and_score`` (``backend="auto"``: the C++ kernel on CPU, Triton on CUDA),
  JPEG scores through ``iq.ssim``. With the cache's images on a CUDA device everything stays on it
  (DALI output is copied device to device into torch tensors with ``feed_ndarray``).
"""

from __future__ import annotations

import os
import tarfile
import weakref
from pathlib import Path

import numpy as np
import torch

from ..config import KINDS, LEVELS
from ..ops._images import as_images
from ..ops.api import distort_and_score, ssim
from .mixture import DistortionCache, EpochPlan
from .sources import IMAGE_EXTS, DataError, Dataset, _sha256_tree, sha256_file
from .sources import load as load_plain

BATCH = 1024
"""Images per DALI iteration."""


class DaliUnavailable(ImportError):
    """NVIDIA DALI is not installed (or not importable) here."""


def available() -> bool:
    """Whether ``nvidia.dali`` can be imported."""
    try:
        _dali()
    except DaliUnavailable:
        return False
    return True


def _dali():
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
    except ImportError as e:
        raise DaliUnavailable(
            f"NVIDIA DALI is not importable ({e}): install it with `pip install nvidia-dali-cuda120` "
            "(Linux x86_64; its CPU operators run without a GPU), or use the plain loader"
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
        raise DataError(f"{what}: images differ in size ({shapes[:4]}...); all must match")
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


# ----------------------------------------------------------------------------------------------
# JPEG


def jpeg(images, quality, *, device=None, batch_size: int = BATCH, num_threads: int | None = None):
    """JPEG-compress and decode uint8 N x H x W x 3 images with ``fn.jpeg_compression_distortion``.

    ``quality``: an int in [1, 100] or one per image. ``device``: "cpu" (libjpeg-turbo, equal to
    PIL bit for bit) or "gpu" (DALI's CUDA kernel, approximate); default: where the images are.
    Returns the input's type and device (numpy in, numpy out; torch CUDA in, torch CUDA out).
    """
    t, back = as_images(images)
    n = t.shape[0]
    q = np.asarray(quality)
    if q.dtype == bool or not np.issubdtype(q.dtype, np.integer) or q.ndim > 1 or (q.ndim == 1 and len(q) != n):
        raise ValueError(f"quality must be an integer in [1, 100] or one integer per image, got {quality!r}")
    if q.size and (q.min() < 1 or q.max() > 100):
        raise ValueError(f"JPEG quality must lie in [1, 100], got {quality!r}")
    q = np.broadcast_to(q.astype(np.int32), (n,))
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


# ----------------------------------------------------------------------------------------------
# Reading and decoding


def _shard_range(n: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """DALI's contiguous shard of ``n`` samples: [n * k // S, n * (k + 1) // S)."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    if isinstance(shard_id, bool) or not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be an integer in [0, {num_shards}), got {shard_id!r}")
    return n * shard_id // num_shards, n * (shard_id + 1) // num_shards


def _folder_listing(root: Path, split: str) -> tuple[list[str], list[str], list[int]]:
    """(classes, files, labels) of root/split/<class>/<image>, ordered as sources.load orders them."""
    d = root / split
    if not d.is_dir():
        raise DataError(f"{root}: missing split folder '{split}/' (expected {split}/<class>/<image>)")
    classes = sorted(c.name for c in d.iterdir() if c.is_dir())
    if len(classes) < 2:
        raise DataError(f"{d}: need at least 2 class folders, found {classes}")
    files, labels = [], []
    for ci, c in enumerate(classes):
        names = sorted(p.name for p in (d / c).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not names:
            raise DataError(f"{root}: class folder {split}/{c}/ is empty")
        files += [str(d / c / nm) for nm in names]
        labels += [ci] * len(names)
    return classes, files, labels


def _archive_listing(path: Path, split: str) -> tuple[list[str], list[str], list[bytes], list[int]]:
    entries: dict[str, list[tuple[str, bytes]]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if m.isdir() and len(parts) >= 2 and parts[-2] == split:
                    entries.setdefault(parts[-1], [])
                elif (m.isfile() and len(parts) >= 3 and parts[-3] == split
                      and parts[-1].lower().endswith(IMAGE_EXTS)):
                    entries.setdefault(parts[-2], []).append((parts[-1], tar.extractfile(m).read()))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: cannot read archive ({e})") from None
    if not entries:
        raise DataError(f"{path}: no {split}/<class>/<image> files in the archive")
    classes = sorted(entries)
    if len(classes) < 2:
        raise DataError(f"{path}: need at least 2 class folders in {split}/, found {classes}")
    names, blobs, labels = [], [], []
    for ci, c in enumerate(classes):
        if not entries[c]:
            raise DataError(f"{path}: class folder {split}/{c}/ is empty")
        for nm, raw in sorted(entries[c]):
            names.append(f"{path}:{split}/{c}/{nm}")
            blobs.append(raw)
            labels.append(ci)
    return classes, names, blobs, labels


def _decode(fn, types, enc, decoder: str):
    # jpeg_fancy_upsampling: the GPU decoder upsamples chroma the way libjpeg (and PIL) does
    kw = {"jpeg_fancy_upsampling": True} if decoder == "mixed" else {}
    return fn.decoders.image(enc, device=decoder, output_type=types.RGB, **kw)


def read_split(path, split: str = "train", *, shard_id: int = 0, num_shards: int = 1, device=None,
               batch_size: int = 256, num_threads: int | None = None):
    """Decode one split of a class-folder tree (``path/split/<class>/<image>``) or of a ``.tar`` /
    ``.tar.gz`` of one, with DALI. Returns ``(images, labels, classes, files)`` for this rank's
    shard: images uint8 n x H x W x 3 (numpy on the CPU, a CUDA torch tensor when decoding on a
    GPU; ``device`` defaults to the GPU where CUDA is available), labels int64 (index into the
    sorted class names), files the sources in order.

    Folders go through ``fn.readers.file(files=..., labels=..., shard_id, num_shards)``; archive
    members are read here and fed as encoded bytes through ``fn.external_source``. Both decode with
    ``fn.decoders.image`` (``"mixed"`` on a GPU, ``"cpu"`` otherwise) in the order ``sources.load``
    uses (classes sorted, files sorted by name), so shard 0 of 1 equals ``sources.load``'s split.
    """
    _, fn, types = _dali()
    root = Path(path).expanduser()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not root.exists():
        raise DataError(f"{root} not found: give a directory or .tar/.tar.gz of train/ and test/ class folders")
    if root.is_file() and not tarfile.is_tarfile(root):
        raise DataError(f"{root} is not a tar archive (expected .tar or .tar.gz of class folders)")
    dev = _device(device, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    batch_size, num_threads = _check_batch(batch_size), _threads(num_threads)
    if root.is_dir():
        classes, files, labels = _folder_listing(root, split)
        blobs = None
    else:
        classes, files, blobs, labels = _archive_listing(root, split)
    lo, hi = _shard_range(len(files), shard_id, num_shards)
    n = hi - lo
    batch_size = max(1, min(batch_size, n))  # a batch never holds a file twice
    n_iter = -(-n // batch_size)
    decoder = "mixed" if dev == "gpu" else "cpu"

    if blobs is None:
        def graph():
            # The last batch wraps to the start of this shard (stick_to_shard) and is trimmed below.
            # Not pad_last_batch: it repeats the last file to fill the batch, and DALI 2.4 can crash
            # (SIGSEGV) when several copies of a corrupt file fail to decode at once.
            enc, lab = fn.readers.file(files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
                                       stick_to_shard=True, pad_last_batch=False, random_shuffle=False,
                                       name="reader")
            return _decode(fn, types, enc, decoder), lab
        feeds = {}
    else:
        def graph():
            enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
            lab = fn.external_source(name="lab", dtype=types.INT32, ndim=0)
            return _decode(fn, types, enc, decoder), lab
        shard_blobs = [np.frombuffer(b, np.uint8) for b in blobs[lo:hi]]
        shard_labels = np.asarray(labels[lo:hi], np.int32)
        feeds = {"enc": [shard_blobs[i:i + batch_size] for i in range(0, n, batch_size)],
                 "lab": [shard_labels[i:i + batch_size] for i in range(0, n, batch_size)]}

    device_id = _device_id(device) if dev == "gpu" else None
    imgs: list = []
    labs: list[np.ndarray] = []
    srcs: list[str] = []
    try:
        for k, (x, lab) in enumerate(_run(graph, feeds, n_iter, batch_size, num_threads, device_id)):
            take = min(batch_size, n - k * batch_size)  # the last batch is padded by repeating a sample
            if not x.is_dense_tensor():
                shapes = sorted({tuple(x[i].shape()) for i in range(len(x))})
                raise DataError(f"{root}: images of {split}/ differ in size ({shapes[:4]}...); all must match")
            if dev == "gpu":
                full = torch.empty(tuple(x.as_tensor().shape()), dtype=torch.uint8, device=f"cuda:{device_id}")
                _copy_out(x, full, f"{root}:{split}")
                imgs.append(full[:take])
            else:
                imgs.append(np.array(x.as_tensor())[:take])
            labs.append(np.array(lab.as_tensor()).reshape(-1)[:take].astype(np.int64))
            if blobs is None:
                srcs += [x[i].source_info() for i in range(take)]
    except RuntimeError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{root}: DALI could not read or decode {split}/ ({str(e).splitlines()[0]})") from None
    shard_files = files[lo:hi]
    if n == 0:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0, np.int64), tuple(classes), shard_files
    shapes = {tuple(i.shape[1:]) for i in imgs}
    if len(shapes) != 1:
        raise DataError(f"{root}: images of {split}/ differ in size ({sorted(shapes)[:4]}...); all must match")
    images = torch.cat(imgs) if dev == "gpu" else np.concatenate(imgs)
    lab = np.concatenate(labs)
    if not np.array_equal(lab, np.asarray(labels[lo:hi])) or (srcs and any(srcs) and srcs != shard_files):
        raise RuntimeError(f"{root}: DALI returned other samples of {split}/ than shard {shard_id} of {num_shards}")
    return images, lab, tuple(classes), shard_files


def load(spec, *, shard_id: int = 0, num_shards: int = 1, device=None, batch_size: int = 256,
         num_threads: int | None = None) -> Dataset:
    """A :class:`Dataset` like ``sources.load(spec)``, decoded by DALI, its training set sharded.

    Class folders and archives of them are read and decoded by DALI (:func:`read_split`); the
    training split is this rank's shard, the test split is whole. Every other spec (``cifar10``,
    ``synthetic``, CIFAR python batches) is in-memory data from ``sources.load``, sharded by rows
    the same way. Arrays are numpy (a GPU decode is copied to the host once, at load).
    """
    s = str(spec)
    path = Path(s).expanduser()
    folders = path.is_dir() and (path / "train").is_dir()
    if not folders and path.is_file() and tarfile.is_tarfile(path):
        try:
            with tarfile.open(path, "r:*") as tar:
                folders = not any(Path(n).name in {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"}
                                  for n in tar.getnames())
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{path}: cannot read archive ({e})") from None
    if not folders:
        ds = load_plain(spec)
        lo, hi = _shard_range(len(ds.train_y), shard_id, num_shards)
        if (lo, hi) == (0, len(ds.train_y)):
            return ds
        return Dataset(ds.train_x[lo:hi], ds.train_y[lo:hi], ds.test_x, ds.test_y, ds.classes,
                       f"{ds.source} (shard {shard_id} of {num_shards})", ds.checksum)
    kw = {"device": device, "batch_size": batch_size, "num_threads": num_threads}
    trx, try_, classes, _ = read_split(path, "train", shard_id=shard_id, num_shards=num_shards, **kw)
    tex, tey, test_classes, _ = read_split(path, "test", **kw)
    if classes != test_classes:
        raise DataError(f"{path}: train/ and test/ hold different classes: {list(classes)} vs {list(test_classes)}")
    host = (lambda a: a.cpu().numpy()) if isinstance(trx, torch.Tensor) else (lambda a: a)
    checksum = sha256_file(path) if path.is_file() else _sha256_tree(path)
    src = str(path) if num_shards == 1 else f"{path} (shard {shard_id} of {num_shards})"
    return Dataset(host(trx), try_, host(tex), tey, classes, src, checksum)


# ----------------------------------------------------------------------------------------------
# The epoch's training data


class DaliDistortionCache:
    """``DistortionCache`` with JPEG from DALI; same ``images`` / ``get`` interface and results.

    ``images``: uint8 N x H x W x 3, numpy or torch (CPU or CUDA); results come back in the same
    type and device. ``precompute=True``: blur and JPEG copies and scores are computed once per
    level for all images on first use (deterministic work done once), noise per call;
    ``precompute=False``: every kind only for the requested images, every call.
    ``jpeg_device``: "cpu" (libjpeg, exact) or "gpu" (DALI's kernel, approximate); default: the
    images' device.
    """

    def __init__(self, images, backend: str = "auto", levels=LEVELS, *, iqa: str = "ssim", precompute: bool = True,
                 jpeg_device=None, batch_size: int = BATCH, num_threads: int | None = None):
        _dali()
        self.images = images
        self.backend = backend
        self.levels = levels
        self.iqa = iqa
        self.precompute = bool(precompute)
        self._t, self._back = as_images(images)
        self.jpeg_device = _device(jpeg_device, self._t.device)
        self.batch_size, self.num_threads = _check_batch(batch_size), _threads(num_threads)
        self._fixed: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _compute(self, kind: str, level: int, x: torch.Tensor, idx: torch.Tensor, seed: int):
        p = self.levels.param(kind, level)
        if kind == "jpeg":
            y = jpeg(x, p, device=self.jpeg_device, batch_size=self.batch_size, num_threads=self.num_threads)
            s = ssim(x, y, backend=self.backend) if self.iqa == "ssim" else None
        else:
            y, s = distort_and_score(x, kind, param=p, seed=seed, ids=idx, backend=self.backend)
        if self.iqa != "ssim":  # another quality measure, as DistortionCache(iqa=...) scores it
            from ..ops.iqa import iqa_quality

            s = torch.as_tensor(iqa_quality(x, y, self.iqa, backend=self.backend)).to(x.device)
        return y, s

    def get_tensors(self, kind: str, level: int, idx, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`get`, as torch tensors on the images' device."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        ix = torch.as_tensor(np.asarray(idx, np.int64)).to(self._t.device)
        if kind == "noise" or not self.precompute:
            return self._compute(kind, level, self._t[ix], ix, seed)
        key = (kind, level)
        if key not in self._fixed:
            all_ids = torch.arange(self._t.shape[0], device=self._t.device)
            self._fixed[key] = self._compute(kind, level, self._t, all_ids, seed)
        y, s = self._fixed[key]
        return y[ix], s[ix]

    def get(self, kind: str, level: int, idx: np.ndarray, seed: int):
        y, s = self.get_tensors(kind, level, idx, seed)
        return self._back(y), self._back(s)

    def epoch_tensors(self, plan: EpochPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's images and scores as torch tensors on the images' device."""
        n = self._t.shape[0]
        if len(plan.level) != n or len(plan.kind) != n:
            raise ValueError(f"the epoch plan covers {len(plan.level)} images, the cache holds {n}")
        x = self._t.clone(memory_format=torch.contiguous_format)
        s = torch.ones(n, dtype=torch.float32, device=self._t.device)
        for ki, k in enumerate(KINDS):
            for lvl in (1, 2, 3):
                idx = np.flatnonzero((plan.kind == ki) & (plan.level == lvl))
                if len(idx):
                    y, sc = self.get_tensors(k, lvl, idx, plan.noise_seed)
                    ix = torch.from_numpy(idx).to(self._t.device)
                    x[ix], s[ix] = y, sc
        return x, s


_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dali_cache(cache: DistortionCache | DaliDistortionCache) -> DaliDistortionCache:
    """The DALI cache for ``cache`` (itself, or one made once for a plain ``DistortionCache``)."""
    if isinstance(cache, DaliDistortionCache):
        return cache
    if not isinstance(cache, DistortionCache):
        raise TypeError(f"cache must be a DistortionCache or DaliDistortionCache, got {type(cache).__name__}")
    if cache not in _WRAPPED:
        _WRAPPED[cache] = DaliDistortionCache(cache.images, cache.backend, cache.levels,
                                              iqa=getattr(cache, "iqa", "ssim"))
    return _WRAPPED[cache]


def dali_epoch_data(cache: DistortionCache | DaliDistortionCache, plan: EpochPlan):
    """``epoch_data(cache, plan)`` through DALI: the epoch's images (pristine where planned) and
    SSIM scores (1 if pristine), equal to the plain path's (bit for bit with CPU JPEG).

    Accepts the plain ``DistortionCache`` (wrapped once, its blur/JPEG computed once) or a
    :class:`DaliDistortionCache`. Returns the images' type: numpy arrays for numpy images, torch
    tensors on the images' device for torch images (CUDA stays on the GPU).
    """
    c = dali_cache(cache)
    x, s = c.epoch_tensors(plan)
    return c._back(x), c._back(s)


def dali_test_sets(ds: Dataset, backend: str = "auto", jpeg_device=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``evaluate.test_sets`` through DALI: the ten fixed test sets, JPEG ones from DALI."""
    from ..evaluate import TEST_NOISE_SEED, TEST_SETS, test_set_name

    cache = DaliDistortionCache(ds.test_x, backend=backend, jpeg_device=jpeg_device)
    idx = np.arange(len(ds.test_y))
    out = {"pristine": (ds.test_x, np.ones(len(idx), np.float32))}
    for kind, lvl in TEST_SETS[1:]:
        out[test_set_name(kind, lvl)] = cache.get(kind, lvl, idx, TEST_NOISE_SEED)
    return out
