"""jpeg: encode at quality 8 and decode, the dali backend (NVIDIA DALI's CPU operator, where installed)
against PIL.

Contenders on the bench images (bench/conftest.py): ``dali`` (iqals_fast's default JPEG where DALI
is installed; libjpeg's bytes, equal to PIL's bit for bit), ``torch`` (the reference backend: PIL
over a thread pool) and ``PIL loop`` (what a user would write: Image.save(format="JPEG") and decode,
one image at a time, one thread). bench/results/dali-cpu-*.md has the earlier measurement.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from contenders import JPEG_QUALITY
from PIL import Image

import iqals_fast as iq

HAS_DALI = "dali" in iq.backends("jpeg")


def pil_loop(x: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(x)
    for i, im in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as dec:
            out[i] = np.asarray(dec.convert("RGB"))
    return out


@pytest.mark.parametrize("contender", ["dali", "torch", "PIL loop"])
def test_jpeg(benchmark, record, bench_data, contender):
    if contender == "dali" and not HAS_DALI:
        pytest.skip("the dali backend is not installed (NVIDIA DALI)")
    ours = contender == ("dali" if HAS_DALI else "torch")  # auto's JPEG
    record(f"jpeg q={JPEG_QUALITY}", len(bench_data["x"]), ours=ours, data=bench_data["source"])
    if contender == "PIL loop":
        fn, args, kw = pil_loop, (bench_data["x"], JPEG_QUALITY), {}
    else:
        fn, args, kw = iq.distort, (bench_data["t"], "jpeg"), {"param": JPEG_QUALITY, "backend": contender}
    benchmark.pedantic(fn, args=args, kwargs=kw, rounds=5, warmup_rounds=1)
