"""pytest-benchmark: the cpu backend against its peers on 2,000 real CIFAR-10 test images.

One benchmark group per operation (blur+noise+SSIM, noise+SSIM, SSIM against JPEG q=8 copies), one
benchmark per contender; the contenders and operations are bench/compare_cpu.py's, which prints the
same comparison as a table of ratios.

    pytest bench -o addopts="" --benchmark-only --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import pytest
from compare_cpu import CONTENDERS, OPS

pytestmark = pytest.mark.filterwarnings("ignore")  # peers' deprecation notices are not ours to fix

ROUNDS = {"scikit-image": 2}  # a couple of seconds per round


@pytest.mark.parametrize("contender", list(CONTENDERS))
@pytest.mark.parametrize("op", list(OPS))
def test_bench(benchmark, bench_data, op, contender):
    benchmark.group = op
    benchmark.extra_info["images"] = len(bench_data["x"])
    fn, kw = CONTENDERS[contender], OPS[op]
    benchmark.pedantic(fn, args=(bench_data,), kwargs=kw, rounds=ROUNDS.get(contender, 5), warmup_rounds=1)
