"""Datasets: the official CIFAR-10 python archive, CIFAR batches, class folders of images, synthetic.

Every source yields a :class:`Dataset` of uint8 N x H x W x 3 arrays. Decoding happens once: the
decoded arrays are cached as an ``.npz`` keyed by the source's checksum, so a second run does not
decode again. Any problem with the input (missing split, empty class, corrupt image, wrong layout)
raises :class:`DataError` naming the file or folder at fault.

Images of class folders are decoded by PIL (the default), or by NVIDIA DALI's ``fn.decoders.image``
(``decoder="dali"``: its CPU operator, libjpeg-turbo / libpng, equal to PIL's decode bit for bit on
the formats tested; ``"dali-mixed"``: nvJPEG on a GPU, approximate). Each decoder has its own cache
file, so PIL's datasets, checksums and caches are the same whichever decoders were used before.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._io import atomic_write_bytes

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
CACHE_VERSION = 1
DECODERS = ("pil", "dali", "dali-mixed")
"""How images of class folders are decoded: PIL; DALI's CPU operator; DALI's GPU (nvJPEG) operator."""
DALI_BATCH = 256
_DALI_DEVICE = {"dali": "cpu", "dali-mixed": "mixed"}


class DataError(ValueError):
    """The data given cannot be used; the message names the file, folder or option at fault."""


@dataclass
class Dataset:
    train_x: np.ndarray  # uint8 N x H x W x 3
    train_y: np.ndarray  # int64 N
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str
    checksum: str  # sha256 of the source archive (or of the folder listing and contents)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n: int | None, seed: int = 0) -> Dataset:
        """The first ``n`` training images of a fixed class-balanced shuffle (test set unchanged). An ``n``
        above the number of training images is the whole set, said in a note."""
        if n is not None and n > len(self.train_y):
            print(f"note: --train-subset {n} is more than the {len(self.train_y)} training images of {self.source}: "
                  f"training on all {len(self.train_y)}")
        if n is None or n >= len(self.train_y):
            return self
        if n < self.num_classes:
            raise DataError(f"--train-subset {n} is smaller than the number of classes ({self.num_classes})")
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B5E7]))
        order = rng.permutation(len(self.train_y))
        # round-robin over classes so every class is equally represented
        by_class = [order[self.train_y[order] == c] for c in range(self.num_classes)]
        take = np.stack([b[: n // self.num_classes + 1] for b in by_class], axis=1).reshape(-1)[:n]
        take = np.sort(take)
        return Dataset(self.train_x[take], self.train_y[take], self.test_x, self.test_y, self.classes,
                       f"{self.source} (train subset {n}, seed {seed})", self.checksum)


    def test_subset(self, n: int | None) -> Dataset:
        """A class-balanced test subset: the first images of each class in turn (no randomness)."""
        if n is None or n >= len(self.test_y):
            return self
        if n < 1:
            raise DataError(f"--test-subset must be >= 1, got {n}")
        rank = np.zeros(len(self.test_y), np.int64)
        for c in range(self.num_classes):
            idx = np.flatnonzero(self.test_y == c)
            rank[idx] = np.arange(len(idx))
        take = np.sort(np.lexsort((self.test_y, rank))[:n])
        return Dataset(self.train_x, self.train_y, self.test_x[take], self.test_y[take], self.classes,
                       f"{self.source} (test subset {n})", self.checksum)


def cache_dir() -> Path:
    d = Path(os.environ.get("IQALS_CACHE", Path.home() / ".cache" / "iqals-fast"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_tree(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Public entry point


def load(spec: str | os.PathLike = "cifar10", *, cache: bool = True, decoder: str = "pil") -> Dataset:
    """Load a dataset from ``spec``.

    - ``"cifar10"``: the official python archive from the cache directory (``$IQALS_CACHE``,
      default ``~/.cache/iqals-fast``), downloaded there with its MD5 checked when missing;
    - a directory or ``.tar.gz`` of CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``);
    - a directory or ``.tar.gz`` of class folders of images with ``train/`` and ``test/`` splits;
    - ``"synthetic"``: a deterministic, learnable 10-class dataset generated in memory.

    ``decoder`` (one of ``DECODERS``) decodes the images of class folders; CIFAR's batches hold raw pixels.
    """
    if decoder not in DECODERS:
        raise DataError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    s = str(spec)
    if s == "synthetic":
        return synthetic()
    if s == "cifar10":
        return _load_official(cache)
    path = Path(s).expanduser()
    if not path.exists():
        raise DataError(
            f"data {s!r} not found: give 'cifar10', 'synthetic', or a path to a directory or .tar.gz of "
            "CIFAR-10 python batches or of train/ and test/ class folders"
        )
    if path.is_file() and not tarfile.is_tarfile(path):
        raise DataError(f"{path} is not a tar archive (expected .tar.gz of CIFAR batches or class folders)")
    checksum = sha256_file(path) if path.is_file() else _sha256_tree(path)
    cached = _cache_path(checksum, decoder)
    if cache and cached.is_file():
        ds = _read_cache(cached, str(path), checksum)
        if ds is not None:
            return ds
    ds = _load_tar(path, checksum, decoder) if path.is_file() else _load_dir(path, checksum, decoder)
    if cache:
        _write_cache(cached, ds)
    return ds


def _cache_path(checksum: str, decoder: str = "pil") -> Path:
    tag = "" if decoder == "pil" else f"-{decoder}"
    return cache_dir() / f"decoded-v{CACHE_VERSION}-{checksum[:32]}{tag}.npz"


def _write_cache(path: Path, ds: Dataset) -> None:
    atomic_write_bytes(path, lambda f: np.savez(f, train_x=ds.train_x, train_y=ds.train_y, test_x=ds.test_x,
                                                test_y=ds.test_y, classes=np.array(ds.classes),
                                                checksum=np.array(ds.checksum)))


def _read_cache(path: Path, source: str, checksum: str) -> Dataset | None:
    """The cached dataset, or None (with a note) when the cache file is unreadable (truncated by a full disk
    or a kill, overwritten, of another format): the caller then decodes the source again and rewrites it."""
    try:
        with open(path, "rb") as f, np.load(f) as z:  # allow_pickle=False: no object arrays
            ds = Dataset(z["train_x"], z["train_y"], z["test_x"], z["test_y"], tuple(str(c) for c in z["classes"]),
                         source, str(z["checksum"]))
        # (what the loaders check too: a cache written before a check existed is decoded again, and checked)
        ok = (ds.checksum == checksum and ds.train_x.dtype == np.uint8 and ds.test_x.dtype == np.uint8
              and ds.train_x.ndim == 4 and ds.train_x.shape[1:] == ds.test_x.shape[1:]
              and ds.train_x.shape[1] == ds.train_x.shape[2] and ds.train_x.shape[3] == 3
              and ds.train_y.shape == ds.train_x.shape[:1] and ds.test_y.shape == ds.test_x.shape[:1]
              and all(y.size == 0 or (y.min() >= 0 and y.max() < len(ds.classes)) for y in (ds.train_y, ds.test_y)))
        why = "its contents do not match the source"
    except Exception as e:  # noqa: BLE001 (whatever is wrong with the file, it is rebuilt)
        ok, why = False, f"{type(e).__name__}: {e}"
    if ok:
        return ds
    print(f"note: the decoded cache {path} is unreadable ({why}); decoding {source} again and rewriting it")
    return None


# ----------------------------------------------------------------------------------------------
# The official archive


def _load_official(cache: bool) -> Dataset:
    path = cache_dir() / "cifar-10-python.tar.gz"
    if not path.is_file():
        try:
            tmp = path.with_suffix(".part")
            urllib.request.urlretrieve(CIFAR10_URL, tmp)  # noqa: S310 (fixed https URL)
            os.replace(tmp, path)
        except OSError as e:
            raise DataError(
                f"cannot download CIFAR-10 from {CIFAR10_URL} ({e}). Offline? Put cifar-10-python.tar.gz in "
                f"{cache_dir()}, or pass --data with a directory or .tar.gz of CIFAR-10 python batches, a "
                "directory or .tar.gz of train/ and test/ class folders, or 'synthetic'"
            ) from None
    md5 = hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 (the archive's published checksum)
    if md5 != CIFAR10_MD5:
        raise DataError(f"{path} has MD5 {md5}, expected {CIFAR10_MD5}: delete it and download again")
    return load(path, cache=cache)


# ----------------------------------------------------------------------------------------------
# CIFAR python batches


CIFAR_PICKLE_GLOBALS = frozenset({
    # numpy arrays and their dtypes (numpy 1.x pickles name numpy.core, numpy 2.x numpy._core)
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # how Python pickles plain objects and (protocols 0-2, from Python 3) bytes
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"), ("_codecs", "encode"),
})
"""The only (module, name) globals a CIFAR-10 python batch may name: a dict of bytes keys holding a
uint8 numpy array and lists of ints and bytes needs nothing else (any pickle protocol, 0-5)."""


class _Refused(pickle.UnpicklingError):
    """A pickle named a global outside ``CIFAR_PICKLE_GLOBALS``; the message is its ``module.name``."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batch format and nothing else: every global the stream names must be in
    ``CIFAR_PICKLE_GLOBALS``; anything else is refused before it is imported, let alone called."""

    def find_class(self, module: str, name: str):
        if (module, name) in CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def _unpickle(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 N x 32 x 32 x 3, int64 N labels in 0..9); ``name`` is the file.

    The one unpickling of the package, by ``_CifarUnpickler`` (``pickle.load``/``pickle.loads`` would import
    and call whatever the file names: a crafted batch could run code)."""
    try:
        d = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as e:
        raise DataError(
            f"{name}: refused to unpickle {e}: a CIFAR-10 python batch holds only numpy arrays, lists, bytes and "
            "ints, and a pickle naming anything else can run code. The file was not loaded; do not trust it"
        ) from None
    except Exception as e:  # noqa: BLE001 (any other failure means a corrupt batch)
        raise DataError(f"{name}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        keys = sorted(map(repr, d)) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{name}: not a CIFAR-10 python batch: expected a dict with b'data' and b'labels', got {keys}")
    try:
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[b"labels"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{name}: not a CIFAR-10 python batch ({e})") from None
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu":
            raise DataError(f"{name}: pixel data has dtype {data.dtype}; CIFAR-10 batches hold uint8 pixels 0..255 "
                            "(refusing to convert it)")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise DataError(f"{name}: pixel values range over [{data.min()}, {data.max()}]; CIFAR-10 pixels are 0..255")
        data = data.astype(np.uint8)  # integers within 0..255: exact
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{name}: expected N x 3072 data and N labels, got {data.shape} and {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if len(bad):
        raise DataError(f"{name}: label {labels[bad[0]]} (image {bad[0]}) is outside 0..{len(CIFAR10_CLASSES) - 1}; "
                        f"{len(bad)} of {len(labels)} labels are out of range (CIFAR-10 has {len(CIFAR10_CLASSES)} classes)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels.astype(np.int64)


CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _from_batches(files: dict[str, tuple[str, bytes]], source: str, checksum: str) -> Dataset:
    """files: batch name -> (the file's path or archive member, for messages; its bytes)."""
    train = list(CIFAR_BATCHES[:-1])
    missing = [n for n in CIFAR_BATCHES if n not in files]
    if missing:
        raise DataError(f"{source}: CIFAR-10 python batches incomplete, missing {missing}")
    tr = [_unpickle(files[n][1], files[n][0]) for n in train]
    te = _unpickle(files["test_batch"][1], files["test_batch"][0])
    return Dataset(np.concatenate([x for x, _ in tr]), np.concatenate([y for _, y in tr]), te[0], te[1],
                   CIFAR10_CLASSES, source, checksum)


# ----------------------------------------------------------------------------------------------
# Class folders


def _decode(raw: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"corrupt or unreadable image {name}: {e}") from None


def _decode_pil(files: list[tuple[str, bytes]], pool: ThreadPoolExecutor) -> list[np.ndarray]:
    """[(name for messages, encoded bytes)] -> RGB uint8 arrays, decoded by PIL on the pool's threads."""
    return list(pool.map(lambda f: _decode(f[1], f[0]), files))


def _decode_dali(files: list[tuple[str, bytes]], device: str) -> list[np.ndarray]:
    """The same with DALI's ``fn.decoders.image`` on ``device`` ("cpu" or "mixed"): the encoded bytes are
    fed through ``fn.external_source``, ``DALI_BATCH`` at a time. EXIF orientation is ignored, as PIL's
    ``Image.open`` does. A batch DALI cannot decode is decoded again by PIL to name the file at fault."""
    try:
        from nvidia.dali import Pipeline, fn, types
    except ImportError:
        raise DataError("decoder 'dali' needs NVIDIA DALI (pip install nvidia-dali-cuda120)") from None
    device_id = None
    if device == "mixed":
        import torch

        if not torch.cuda.is_available():
            raise DataError("decoder 'dali-mixed' decodes on a GPU, and no CUDA GPU is available here")
        device_id = torch.cuda.current_device()
    pipe = Pipeline(batch_size=DALI_BATCH, num_threads=min(8, os.cpu_count() or 1), device_id=device_id,
                    prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    with pipe:
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        # jpeg_fancy_upsampling: nvJPEG upsamples chroma the way libjpeg-turbo (and PIL) does
        extra = {"jpeg_fancy_upsampling": True} if device == "mixed" else {}
        pipe.set_outputs(fn.decoders.image(enc, device=device, output_type=types.RGB, adjust_orientation=False,
                                           **extra))
    pipe.build()
    out = []
    try:
        for i in range(0, len(files), DALI_BATCH):
            chunk = files[i:i + DALI_BATCH]
            pipe.feed_input("enc", [np.frombuffer(raw, np.uint8) for _, raw in chunk])
            try:
                (images,) = pipe.run()
            except RuntimeError as e:
                for name, raw in chunk:
                    _decode(raw, name)  # raises DataError naming the file PIL cannot read either
                raise DataError(f"DALI cannot decode an image among {chunk[0][0]} .. {chunk[-1][0]}: "
                                f"{str(e).splitlines()[0]}") from None
            if device == "mixed":
                images = images.as_cpu()
            out += [np.array(images[j]) for j in range(len(chunk))]
    finally:
        del pipe
    return out


def _from_folders(entries: dict[tuple[str, str], list[tuple[str, bytes]]], source: str, checksum: str,
                  decoder: str = "pil") -> Dataset:
    """entries: (split, class) -> [(file name, bytes)]."""
    splits = {s for s, _ in entries}
    for s in ("train", "test"):
        if s not in splits:
            raise DataError(f"{source}: missing split folder '{s}/' (expected train/<class>/* and test/<class>/*)")
    classes = sorted({c for s, c in entries if s == "train"})
    test_classes = sorted({c for s, c in entries if s == "test"})
    if classes != test_classes:
        raise DataError(f"{source}: train/ and test/ hold different classes: {classes} vs {test_classes}")
    if len(classes) < 2:
        raise DataError(f"{source}: need at least 2 class folders, found {classes}")
    out = {}
    first = None  # (name, shape) of the first training image: every image must have its size
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for s in ("train", "test"):
            xs, ys, names = [], [], []
            for ci, c in enumerate(classes):
                files = sorted(entries[(s, c)])
                if not files:
                    raise DataError(f"{source}: class folder {s}/{c}/ is empty")
                named = [(f"{source}:{s}/{c}/{name}", raw) for name, raw in files]
                imgs = _decode_pil(named, pool) if decoder == "pil" else _decode_dali(named, _DALI_DEVICE[decoder])
                xs.extend(imgs)
                ys.extend([ci] * len(imgs))
                names.extend(n for n, _ in named)
            if first is None:
                first = (names[0], xs[0].shape)
                h, w = first[1][:2]
                if h != w:
                    raise DataError(f"{first[0]}: images are {h} x {w} pixels (height x width); the CNN needs square "
                                    "images: crop or resize them all to N x N")
            for name, x in zip(names, xs):
                if x.shape != first[1]:
                    raise DataError(f"{name} is {x.shape[0]} x {x.shape[1]} pixels, but {first[0]} is "
                                    f"{first[1][0]} x {first[1][1]}: all images (train/ and test/) must have one size")
            out[s] = (np.stack(xs), np.asarray(ys, np.int64))
    return Dataset(out["train"][0], out["train"][1], out["test"][0], out["test"][1], tuple(classes), source, checksum)


def _load_tar(path: Path, checksum: str, decoder: str = "pil") -> Dataset:
    batches: dict[str, tuple[str, bytes]] = {}
    folders: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if m.isdir() and len(parts) >= 2 and parts[-2] in ("train", "test"):
                    folders.setdefault((parts[-2], parts[-1]), [])
                if not m.isfile() or not parts:
                    continue
                name = parts[-1]
                if name in CIFAR_BATCHES:
                    batches[name] = (f"{path}:{m.name}", tar.extractfile(m).read())
                elif len(parts) >= 3 and parts[-3] in ("train", "test") and name.lower().endswith(IMAGE_EXTS):
                    folders.setdefault((parts[-3], parts[-2]), []).append((name, tar.extractfile(m).read()))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: cannot read archive ({e})") from None
    if batches:
        return _from_batches(batches, str(path), checksum)
    if folders:
        return _from_folders(folders, str(path), checksum, decoder)
    raise DataError(
        f"{path}: wrong layout: found neither CIFAR-10 python batches (data_batch_1..5, test_batch) nor "
        "train/<class>/<image> and test/<class>/<image> folders"
    )


def _load_dir(root: Path, checksum: str, decoder: str = "pil") -> Dataset:
    batches = {p.name: (str(p), p.read_bytes()) for p in sorted(root.rglob("*"))
               if p.name in CIFAR_BATCHES and p.is_file()}
    if batches:
        return _from_batches(batches, str(root), checksum)
    folders: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for split in ("train", "test"):
        d = root / split
        if d.is_dir():
            for c in d.iterdir():
                if c.is_dir():
                    folders[(split, c.name)] = [(p.name, p.read_bytes()) for p in c.iterdir()
                                                if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if not folders:
        raise DataError(
            f"{root}: wrong layout: found neither CIFAR-10 python batches nor train/<class>/ and test/<class>/ folders"
        )
    return _from_folders(folders, str(root), checksum, decoder)


# ----------------------------------------------------------------------------------------------
# Synthetic


def synthetic(n_train: int = 5000, n_test: int = 1000, size: int = 32, seed: int = 0) -> Dataset:
    """A deterministic, learnable 10-class dataset: class = (grating orientation, colour), plus clutter.

    Each class has its own grating orientation and frequency and a dominant colour; every image
    gets a random phase, contrast, brightness, a random occluding rectangle and pixel noise, so a
    small CNN must learn oriented structure and colour, and blur / noise / JPEG make it harder.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5717]))
    k = 10
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angles = np.arange(k) * np.pi / k
    freqs = 2.0 + (np.arange(k) % 3)
    colours = np.stack([0.5 + 0.4 * np.cos(2 * np.pi * (np.arange(k) / k + o)) for o in (0, 1 / 3, 2 / 3)], 1)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % k
        rng.shuffle(y)
        a = angles[y][:, None, None] + rng.normal(0, 0.08, (n, 1, 1))
        ph = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        u = np.cos(a) * xx + np.sin(a) * yy
        g = np.sin(2 * np.pi * freqs[y][:, None, None] * u + ph)
        contrast = rng.uniform(0.15, 0.35, (n, 1, 1, 1))
        bright = rng.uniform(-0.1, 0.1, (n, 1, 1, 1))
        img = colours[y][:, None, None, :] + contrast * g[..., None] + bright
        for i in range(n):  # an occluder of random colour
            r0, c0 = rng.integers(0, size - 8, 2)
            h, w = rng.integers(4, 12, 2)
            img[i, r0:r0 + h, c0:c0 + w] = rng.uniform(0, 1, 3)
        img += rng.normal(0, 0.03, img.shape)
        return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), y.astype(np.int64)

    trx, try_ = make(n_train)
    tex, tey = make(n_test)
    classes = tuple(f"class{i}" for i in range(k))
    return Dataset(trx, try_, tex, tey, classes, f"synthetic(n_train={n_train}, n_test={n_test}, seed={seed})",
                   f"synthetic-v1-{n_train}-{n_test}-{size}-{seed}")
