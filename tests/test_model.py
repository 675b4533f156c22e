"""The paper's CNN: SAME pooling, initialisation and per-image standardisation (its LRN: tests/ops/test_lrn.py)."""

import pytest
import torch

from iqals_fast.config import PAPER
from iqals_fast.model import PaperCNN, max_pool_same, standardize


def test_max_pool_same_follows_tensorflow_windows():
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(1, 2, 32, 32)
    y = max_pool_same(x)
    assert y.shape == (1, 2, 16, 16)
    # TF SAME: window i covers rows 2i..2i+2 (padding only at the bottom), so its max is at 2i+2 (or 31)
    for i in range(16):
        r = min(2 * i + 2, 31)
        assert float(y[0, 0, i, i]) == float(x[0, 0, r, r])


def test_standardize_is_per_image_standardization():
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    y = standardize(x)
    assert y.shape == (3, 3, 32, 32)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(1, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    flat = standardize(torch.full((1, 32, 32, 3), 7, dtype=torch.uint8))  # constant image: no division by 0
    assert torch.isfinite(flat).all() and float(flat.abs().max()) == 0


def test_architecture_and_initialisation():
    m = PaperCNN(seed=0)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert m.fc1.in_features == 8 * 8 * 64 and m.fc1.out_features == 384 and m.fc2.out_features == 192
    for layer, std in ((m.conv1, 5e-2), (m.conv2, 5e-2), (m.fc1, 0.04), (m.fc3, 1 / 192)):
        w = layer.weight.detach()
        assert float(w.abs().max()) <= 2 * std + 1e-7  # truncated at two std
        assert float(w.std()) == pytest.approx(std * 0.88, rel=0.1)  # std of a normal truncated at 2 sigma
    assert float(m.conv2.bias.detach()[0]) == pytest.approx(0.1) and float(m.conv1.bias.detach().abs().max()) == 0
    assert [p.shape for p in m.decayed_parameters()] == [m.fc1.weight.shape, m.fc2.weight.shape]
    torch.testing.assert_close(PaperCNN(seed=0).fc1.weight, m.fc1.weight)  # deterministic in the seed


def test_paper_protocol_and_scaled_schedule():
    p = PAPER
    assert (p.epochs, p.batch_size, p.lr, p.lr_step_epochs, p.weight_decay) == (2000, 100, 0.1, 350, 0.004)
    assert PAPER.lr_at(349) == 0.1 and PAPER.lr_at(350) == pytest.approx(0.01) and PAPER.lr_at(1999) == pytest.approx(1e-6)
    p = PAPER.scaled(epochs=40)
    assert p.lr_step_epochs == 7 and p.lr_at(6) == 0.1 and p.lr_at(7) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="--epochs"):
        PAPER.scaled(epochs=0)


def test_relu_after_pool_is_exactly_relu_before_pool():
    """forward() pools before the ReLU of layer 1 (cheaper): the same values and gradients, bit for bit."""
    x = torch.randn(4, 8, 32, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    a = max_pool_same(torch.relu(x))
    b = torch.relu(max_pool_same(x2))
    assert torch.equal(a, b)
    dy = torch.randn_like(a)
    a.backward(dy)
    b.backward(dy)
    assert torch.equal(x.grad, x2.grad)


@pytest.mark.parametrize("h,w", [(32, 32), (16, 16), (31, 33), (8, 9), (3, 3)])
def test_max_pool_same_equals_the_padded_reference(h, w):
    from iqals_fast.model import max_pool_same_padded

    x = torch.randn(2, 3, h, w, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    a, b = max_pool_same(x), max_pool_same_padded(x2)
    assert torch.equal(a, b)
    dy = torch.randn_like(a)
    a.backward(dy)
    b.backward(dy)
    assert torch.equal(x.grad, x2.grad)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_forward_matches_the_plain_pytorch_reference(channels_last):
    """forward() (C++ LRN, pool before ReLU, ceil-mode pooling) vs forward_reference(): float rounding only."""
    fast, ref = PaperCNN(seed=1), PaperCNN(seed=1, reference=True)
    g = torch.Generator().manual_seed(5)
    x = standardize(torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=g))
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ya, yb = fast(x), ref(x.contiguous())
    # float32 rounding of a different LRN and conv layout, through five layers: 1e-4 relative
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5 * float(yb.detach().abs().max()))
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (k, pa), pb in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6 * float(pb.grad.abs().max()), msg=k)
