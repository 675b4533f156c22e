"""ssim: iqals_fast's backends against scikit-image, kornia and pytorch-msssim, in the same run.

SSIM alone, of each bench image (bench/conftest.py) against its JPEG quality-8 copy, as
bench/compare_cpu.py's "SSIM" row: the cpu and torch backends, scikit-image one image at a time,
kornia and pytorch-msssim batched (each with skimage's settings: 11-tap Gaussian window, sigma 1.5,
the border crop). Conversions from uint8 are part of every contender's time.
"""

from __future__ import annotations

import pytest
from contenders import CONTENDERS, OPS, unavailable

ROUNDS = {"scikit-image": 2}


@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_ssim(benchmark, record, bench_data, contender):
    if why := unavailable(contender):
        pytest.skip(why)
    record("ssim vs JPEG q=8 copies", len(bench_data["x"]), ours=contender == "cpu", data=bench_data["source"])
    benchmark.pedantic(CONTENDERS[contender], args=(bench_data,), kwargs=OPS["SSIM"], rounds=ROUNDS.get(contender, 5),
                       warmup_rounds=1)
