"""Shared fixtures: real CIFAR-10 images from the shared archive (skipped where absent) and generated ones."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("IQALS_CIFAR_JPEG", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for tests that take one (cpu, cuda)")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A cache directory of the test's own (IQALS_CACHE), for tests that must not see another's cached data."""
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def device(request):
    d = request.config.getoption("--device")
    if d.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA requested but not available")
    return torch.device(d)


def _read_real(n: int) -> np.ndarray:
    """The first n test images of the archive (one per class in turn), uint8 n x 32 x 32 x 3."""
    per_class: dict[str, list] = {}
    with tarfile.open(ARCHIVE, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] == "test" and parts[-1].endswith(".jpg"):
                lst = per_class.setdefault(parts[-2], [])
                if len(lst) < n:
                    with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                        lst.append((parts[-1], np.asarray(im.convert("RGB"))))
    classes = sorted(per_class)
    for c in classes:
        per_class[c].sort(key=lambda t: t[0])
    out = [per_class[c][i][1] for i in range(n) for c in classes if i < len(per_class[c])]
    return np.stack(out[:n])


@pytest.fixture(scope="session")
def real_images() -> np.ndarray:
    """200 real CIFAR-10 test images (uint8 200 x 32 x 32 x 3); skips cleanly without the archive."""
    if not ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 archive not found at {ARCHIVE} (set IQALS_CIFAR_JPEG)")
    return _read_real(200)


def generated_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Natural-looking generated images: smooth random fields plus edges and flat patches, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.zeros((h, w, 3))
        for c in range(3):
            f = rng.uniform(1, 6, size=2)
            ph = rng.uniform(0, 2 * np.pi, size=2)
            img[..., c] = 0.5 + 0.25 * np.sin(2 * np.pi * f[0] * xx + ph[0]) * np.cos(2 * np.pi * f[1] * yy + ph[1])
        img[: h // 3, : w // 2] = rng.uniform(0, 1, 3)  # a flat patch with a sharp edge
        img += rng.normal(0, 0.05, img.shape)  # texture
        img[rng.uniform(size=(h, w)) < 0.01] = 1.0  # a few saturated pixels
        out[i] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out


@pytest.fixture
def gen():
    return generated_images


def to_tar(root, path):
    """A gzip tar of the folder root, under the name imgs/ (an archive as users pass one)."""
    with tarfile.open(path, "w:gz") as t:
        t.add(root, arcname="imgs")
    return path
