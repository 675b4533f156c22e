"""Eq. 2 soft labels and the Eq. 1 loss against independent PyTorch computations."""

import numpy as np
import pytest
import torch

import iqals_fast as iq


def test_soft_labels_eq2():
    q = iq.soft_labels(np.array([2, 0]), np.array([0.8, 1.0]), num_classes=5)
    assert isinstance(q, np.ndarray) and q.dtype == np.float32
    np.testing.assert_allclose(q[0], [0.05, 0.05, 0.8, 0.05, 0.05], atol=1e-7)
    np.testing.assert_allclose(q[1], [1, 0, 0, 0, 0])  # 0-1 labels: score 1
    np.testing.assert_allclose(q.sum(1), 1, atol=1e-6)


@pytest.mark.parametrize("transform,expected", [("identity", 0.6), ("power:2", 0.36), ("affine:0.5", 0.8),
                                                ("affine:10", 0.1)])
def test_transforms(transform, expected):
    q = iq.soft_labels(torch.tensor([1]), torch.tensor([0.6]), num_classes=10, transform=transform)
    assert float(q[0, 1]) == pytest.approx(expected, abs=1e-6)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-6)


def _reference_loss(logits, labels, scores):
    """Eq. 1 written independently: one-hot mixing, softmax by exp/sum, in float64."""
    k = logits.shape[1]
    onehot = torch.nn.functional.one_hot(labels, k).double()
    s = scores.double()[:, None]
    q = onehot * s + (1 - onehot) * (1 - s) / (k - 1)
    e = torch.exp(logits.double() - logits.double().max(1, keepdim=True).values)
    p = e / e.sum(1, keepdim=True)
    return ((p - q) ** 2).sum(1).mean()


@pytest.mark.parametrize("b,k", [(1, 2), (7, 10), (100, 10), (33, 1000)])
def test_loss_and_gradient_match_reference(b, k):
    g = torch.Generator().manual_seed(b * k)
    z = (3 * torch.randn(b, k, generator=g)).requires_grad_()
    y = torch.randint(0, k, (b,), generator=g)
    s = torch.rand(b, generator=g)
    loss = iq.soft_label_mse(z, y, s, backend="torch")
    (gz,) = torch.autograd.grad(loss, z)
    z64 = z.detach().double().requires_grad_()
    ref = _reference_loss(z64, y, s)
    (gref,) = torch.autograd.grad(ref, z64)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(gz.double(), gref, rtol=1e-4, atol=1e-7)


def test_loss_gradcheck_float64():
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, 2, 2])
    s = torch.tensor([1.0, 0.3, 0.7, 0.0])
    assert torch.autograd.gradcheck(lambda t: iq.soft_label_mse(t.double(), y, s, backend="torch").double(), (z,))


@pytest.mark.parametrize(
    "scores,msg",
    [([0.5, float("nan")], r"scores\[1\] = nan"), ([1.2, 0.5], r"scores\[0\] = 1.2"), ([0.5, -0.1], r"scores\[1\]")],
)
def test_bad_scores_rejected(scores, msg):
    with pytest.raises(ValueError, match=msg):
        iq.soft_label_mse(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor(scores))
    with pytest.raises(ValueError, match=msg):
        iq.soft_labels([0, 1], np.array(scores), num_classes=3)


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: iq.soft_labels([0, 3], [1, 1], num_classes=3), r"labels must lie in \[0, 3\)"),
        (lambda: iq.soft_labels([0.0, 1.0], [1, 1]), "integer"),
        (lambda: iq.soft_labels([0, 1], [1, 1, 1]), "one value per label"),
        (lambda: iq.soft_labels([0], [1], num_classes=1), "num_classes"),
        (lambda: iq.soft_labels([0], [1], transform="log"), "unknown transform"),
        (lambda: iq.soft_labels([0], [1], transform="power:-1"), "unknown transform"),
        (lambda: iq.soft_label_mse(np.zeros((2, 3)), [0, 1], [1, 1]), "logits must be"),
        (lambda: iq.soft_label_mse(torch.zeros(3, 3), [0, 1], [1, 1]), "same batch size"),
        (lambda: iq.soft_label_mse(torch.zeros(2, 3), [0, 1], [1, 1], backend="nope"), "backend must be"),
    ],
)
def test_bad_label_input_is_named(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_strategies_as_data():
    assert sorted(iq.STRATEGIES) == list(range(1, 10))
    assert iq.STRATEGIES[1].kinds == () and not iq.STRATEGIES[1].iqa_ls
    assert iq.STRATEGIES[9].kinds == ("blur", "noise", "jpeg") and iq.STRATEGIES[9].iqa_ls
    assert [s.iqa_ls for s in iq.STRATEGIES.values()] == [False] + [False, True] * 4
    assert iq.LEVELS.blur == (0.7, 1.0, 1.2) and iq.LEVELS.noise == (0.005, 0.01, 0.02) and iq.LEVELS.jpeg == (12, 8, 4)
