"""The ten test sets of Table 2: pristine, and blur / noise / JPEG at levels 1-3.

Distortions of the test set are fixed: blur and JPEG are deterministic and the noise is keyed by
``TEST_NOISE_SEED`` and each test image's index, so every run is tested on the same images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .config import KINDS, LEVELS
from .data.mixture import DistortionCache
from .data.sources import Dataset, atomic_write_bytes, load
from .model import standardize
from .train import load_model

TEST_NOISE_SEED = 20180910
TEST_SETS: tuple[tuple[str, int], ...] = (("pristine", 0),) + tuple((k, lvl) for k in KINDS for lvl in (1, 2, 3))
EVAL = "eval.json"


def test_set_name(kind: str, level: int) -> str:
    return "pristine" if kind == "pristine" else f"{kind}{level}"


def test_sets(ds: Dataset, backend: str = "auto") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (uint8 images, SSIM scores) for the ten test sets."""
    cache = DistortionCache(ds.test_x, backend=backend)
    idx = np.arange(len(ds.test_y))
    out = {"pristine": (ds.test_x, np.ones(len(idx), np.float32))}
    for kind, lvl in TEST_SETS[1:]:
        out[test_set_name(kind, lvl)] = cache.get(kind, lvl, idx, TEST_NOISE_SEED)
    return out


@torch.no_grad()
def predict(model, images: np.ndarray, device, batch: int = 1000) -> np.ndarray:
    """Softmax probabilities, float32 N x K."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).to(device)
        out.append(torch.softmax(model(standardize(x)).float(), 1).cpu())
    return torch.cat(out).numpy()


def evaluate(run: Path, *, data: str | None = None, device: str = "cpu", backend: str = "auto",
             dataset: Dataset | None = None, sets=None, test_subset: int | None = None) -> dict:
    """Accuracy of a trained run on the ten test sets; writes ``RUN/eval.json`` atomically.

    ``test_subset`` keeps a class-balanced N of the test images (a quick look; Table 2 uses the whole test set).
    """
    run = Path(run)
    t0 = time.perf_counter()
    model, cfg = load_model(run, device)
    ds = dataset if dataset is not None else load(data or cfg["data"])
    ds = ds.test_subset(test_subset)
    if ds.checksum != cfg["dataset"]["checksum"]:
        print(f"note: evaluating on {ds.source}, not the training data's source {cfg['dataset']['source']}")
    sets = sets if sets is not None else test_sets(ds, backend)
    results = {}
    for name, (x, s) in sets.items():
        p = predict(model, x, device)
        pred = p.argmax(1)
        results[name] = {
            "accuracy": float((pred == ds.test_y).mean()),
            "mean_ssim": float(np.mean(s)),
            "mean_true_class_confidence": float(p[np.arange(len(p)), ds.test_y].mean()),
            "n": int(len(x)),
        }
    out = {"run": str(run), "strategy": cfg["strategy"], "strategy_name": cfg["strategy_name"],
           "seed": cfg["seed"], "test_data": ds.source, "test_checksum": ds.checksum,
           "test_noise_seed": TEST_NOISE_SEED, "levels": {k: list(getattr(LEVELS, k)) for k in KINDS},
           "results": results, "seconds": time.perf_counter() - t0}
    atomic_write_bytes(run / EVAL, lambda f: f.write((json.dumps(out, indent=2) + "\n").encode()))
    return out
