"""soft_label_mse: Eq. 1's loss with Eq. 2's targets, forward + backward, dispatched against eager PyTorch.

Contenders, K = 10 classes, batch B (100, the training batch, and 4,096):
- ``dispatched``: ``iq.soft_label_mse(..., backend="auto")``, the loss training uses: the fused Triton
  kernel on CUDA; on CPU no faster backend exists, so it is the torch reference itself (plus dispatch);
- ``torch reference``: ``backend="torch"``, the eager reference (ops' torch implementation);
- ``plain autograd``: what a user would write, targets from one_hot, softmax, ``F.mse_loss``.
On a CUDA machine the same benchmarks also run on the GPU (a synchronize closes every call);
bench/gpu_bench.py has the H200 figures (README: 2.0-3.3x eager when called from Python).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import iqals_fast as iq

K = 10
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def plain_autograd(logits, labels, scores):
    off = (1 - scores) / (K - 1)
    q = off[:, None] + F.one_hot(labels, K) * (scores - off)[:, None]
    return F.mse_loss(logits.softmax(dim=1), q, reduction="sum") / logits.shape[0]


CONTENDERS = {
    "dispatched": lambda z, y, s: iq.soft_label_mse(z, y, s, backend="auto"),
    "torch reference": lambda z, y, s: iq.soft_label_mse(z, y, s, backend="torch"),
    "plain autograd": plain_autograd,
}


@pytest.mark.parametrize("contender", list(CONTENDERS))
@pytest.mark.parametrize("batch", [100, 4096])
@pytest.mark.parametrize("device", DEVICES)
def test_soft_label_mse(benchmark, record, device, batch, contender):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, K, generator=g).to(device).requires_grad_()
    labels = torch.randint(0, K, (batch,), generator=g).to(device)
    scores = (0.3 + 0.7 * torch.rand(batch, generator=g)).to(device)
    fn = CONTENDERS[contender]

    def step():
        logits.grad = None
        fn(logits, labels, scores).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    record(f"soft_label_mse fwd+bwd B={batch} {device}", batch, unit="rows", ours=contender == "dispatched")
    benchmark.pedantic(step, rounds=20, warmup_rounds=3)
