"""lrn: TensorFlow's LRN (Table 1's parameters), forward + backward, the C++ op against PyTorch's composite.

On a layer-1-sized input at batch 100 (100 x 64 x 16 x 16 after ReLU), NCHW and channels_last:
``torch composite`` is what a user would write, ``F.local_response_norm`` (pad, square,
avg_pool3d; the torch backend's implementation); ``cpu`` is the dispatched C++ op (csrc/lrn.cpp,
a custom op with its own backward) that the model runs on CPU. bench/results/pipeline-cpu-*.md
has the earlier measurement; the whole training step: ``iqals-fast bench`` (train-*.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import iqals_fast as iq
from iqals_fast.model import LRN_ALPHA, LRN_BETA, LRN_BIAS, LRN_DEPTH_RADIUS
from iqals_fast.ops.api import lrn

SHAPE = (100, 64, 16, 16)
SIZE = 2 * LRN_DEPTH_RADIUS + 1


def composite(x: torch.Tensor) -> torch.Tensor:
    return F.local_response_norm(x, size=SIZE, alpha=LRN_ALPHA * SIZE, beta=LRN_BETA, k=LRN_BIAS)  # TF's alpha x size


def dispatched_cpu(x: torch.Tensor) -> torch.Tensor:
    return lrn(x, LRN_DEPTH_RADIUS, LRN_BIAS, LRN_ALPHA, LRN_BETA, backend="cpu")


CONTENDERS = {"cpu": dispatched_cpu, "torch composite": composite}


def forward_backward(fn, x: torch.Tensor) -> None:
    x = x.detach().requires_grad_()
    y = fn(x)
    y.backward(torch.ones_like(y))


@pytest.mark.parametrize("contender", list(CONTENDERS))
@pytest.mark.parametrize("layout", ["NCHW", "channels_last"])
def test_lrn(benchmark, record, layout, contender):
    if contender == "cpu" and "cpu" not in iq.backends("lrn"):
        pytest.skip("the cpu backend (C++ extension) is not built")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).relu()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    record(f"lrn fwd+bwd {layout}", 1, unit="batches of " + " x ".join(map(str, SHAPE)), ours=contender == "cpu")
    benchmark.pedantic(forward_backward, args=(CONTENDERS[contender], x), rounds=10, warmup_rounds=2)
