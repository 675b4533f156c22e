"""distort_and_score: iqals_fast's backends against what a user would pick instead, in the same run.

On the bench images (bench/conftest.py; IQALS_BENCH_N of them):
- ``test_vs_peers``: blur sigma 1.0 + noise var 0.01 + SSIM, and noise + SSIM (bench/contenders.py's
  OPS): the cpu and torch backends, scikit-image (one image at a time), kornia and pytorch-msssim
  (batched). The README's CPU table; bench/compare_cpu.py prints the same comparison as ratios.
- ``test_level2``: each kind at level 2, the torch backend (the reference) against auto (the C++
  kernels on CPU, DALI's CPU operator for JPEG where installed): bench/results/pipeline-cpu-*.md.
"""

from __future__ import annotations

import pytest
from contenders import CONTENDERS, OPS, unavailable

import iqals_fast as iq
from iqals_fast.config import KINDS

ROUNDS = {"scikit-image": 2}  # a couple of seconds per round at 2,000 images


@pytest.mark.parametrize("contender", list(CONTENDERS))
@pytest.mark.parametrize("op", ["blur+noise+SSIM", "noise+SSIM"])
def test_vs_peers(benchmark, record, bench_data, op, contender):
    if why := unavailable(contender):
        pytest.skip(why)
    record(f"distort_and_score {op}", len(bench_data["x"]), ours=contender == "cpu", data=bench_data["source"])
    benchmark.pedantic(CONTENDERS[contender], args=(bench_data,), kwargs=OPS[op], rounds=ROUNDS.get(contender, 5),
                       warmup_rounds=1)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("kind", list(KINDS) + ["blur+noise"])
def test_level2(benchmark, record, bench_data, kind, backend):
    record(f"distort_and_score {kind} level 2", len(bench_data["x"]), ours=backend == "auto", data=bench_data["source"])
    benchmark.pedantic(iq.distort_and_score, args=(bench_data["t"], kind, 2), kwargs={"backend": backend}, rounds=5,
                       warmup_rounds=1)
